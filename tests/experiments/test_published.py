"""The published-numbers section of a recipe's leaderboard."""

from __future__ import annotations

from taskbalance.experiments.published import published_section


def _board(methods: dict[str, tuple[float, float]]) -> dict:
    rows = [
        {"method": m, "seeds": 3, "metrics": {"segmentation": {"miou": {"mean": v, "std": s}}}}
        for m, (v, s) in methods.items()
    ]
    return {"rows": rows}


def test_published_rows_sit_beside_ours_with_their_source() -> None:
    text = published_section("nyuv2-mtan", _board({"nash_mtl": (0.38125, 0.0125), "ew": (0.3, 0)}))
    lines = text.splitlines()
    assert lines[0] == "## Published numbers (recipe nyuv2-mtan)"
    k = next(i for i, line in enumerate(lines) if "| Nash-MTL |" in line)
    published, ours = lines[k], lines[k + 1]  # the paper's row, then ours of the same method
    assert published.startswith("| published (Navon et al., ICML 2022, Table 2) | Nash-MTL |")
    assert "| 0.4013 | 0.6593 | 0.5300 |" in published  # mIoU 40.13%, pixel acc 65.93%, abs err
    assert "| nash_mtl |" in ours and "0.3812 ± 0.0125" in ours and "3 seed(s)" in ours
    assert ours.count("| – ") == 8  # the board holds only mIoU: the other 8 columns are empty
    moco = next(line for line in lines if "| MoCo |" in line)
    assert "Fernando et al., ICLR 2023" in moco  # rows from later papers name their own source
    assert "IMGrad paper" in text and "rounded to 2 decimals" in text  # where they were read
    assert "mean of the last 10 epochs" in text


def test_a_method_not_run_and_a_recipe_without_numbers() -> None:
    text = published_section("cityscapes-mtan", _board({"ew": (0.5, 0.0)}))
    assert "| ours | nash_mtl | not run |" in text
    assert published_section("celeba-resnet18", _board({"ew": (0.5, 0.0)})) == ""
