"""The published-numbers section of a recipe's leaderboard."""

from __future__ import annotations

from taskbalance.experiments.published import published_section


def _board(methods: dict[str, tuple[float, float]]) -> dict:
    rows = [
        {
            "method": m,
            "seeds": 3,
            "metrics": {"segmentation": {"miou": {"mean": v, "std": s}}},
            "delta_m": {"mean": 10 * v, "std": 2 * s},
        }
        for m, (v, s) in methods.items()
    ]
    baseline = {"metrics": {"segmentation": {"miou": 0.375}}, "seeds": 2}
    return {"rows": rows, "baseline": baseline}


def test_published_rows_sit_beside_ours_with_their_source() -> None:
    text = published_section("nyuv2-mtan", _board({"nash_mtl": (0.38125, 0.0125), "ew": (0.3, 0)}))
    lines = text.splitlines()
    assert lines[0] == "## Published numbers (recipe nyuv2-mtan)"
    k = next(i for i, line in enumerate(lines) if "| Nash-MTL |" in line)
    published, ours = lines[k], lines[k + 1]  # the paper's row, then ours of the same method
    assert published.startswith("| published (Navon et al., ICML 2022, Table 2) | Nash-MTL |")
    # mIoU 40.13%, pixel acc 65.93%, abs err and rel err at the printed 4 decimals; Δm% -4.04
    assert "| 0.4013 | 0.6593 | 0.5261 | 0.2171 |" in published and published.endswith("| -4.04 |")
    assert "| nash_mtl |" in ours and "0.3812 ± 0.0125" in ours and "3 seed(s)" in ours
    assert ours.endswith("| 3.81 ± 0.03 |")  # our Δm% (mean ± std over seeds)
    assert ours.count("| – ") == 8  # the board holds only mIoU: the other 8 columns are empty
    stl = next(i for i, line in enumerate(lines) if "| STL |" in line)  # the paper's baselines
    assert "| 0.3830 | 0.6376 | 0.6754 |" in lines[stl] and "0 (reference)" in lines[stl]
    assert "| ours (2 seed(s)) | single-task | 0.3750 |" in lines[stl + 1]
    moco = next(line for line in lines if "| MoCo |" in line)
    assert "Fernando et al., ICLR 2023" in moco  # rows from later papers name their own source
    assert "NTKMTL" in text and "could not be opened" in text  # where they were read
    assert "mean of the last 10 epochs" in text


def test_a_method_not_run_and_a_recipe_without_numbers() -> None:
    text = published_section("cityscapes-mtan", _board({"ew": (0.5, 0.0)}))
    assert "| ours | nash_mtl | not run |" in text
    assert "| 0.7541 | 0.9366 | 0.0129 | 35.0200 | 6.82 |" in text  # Table 3, rel err included
    assert published_section("celeba-resnet18", _board({"ew": (0.5, 0.0)})) == ""
