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
    published = next(line for line in lines if line.startswith("| published"))
    ours = next(line for line in lines if line.startswith("| ours"))
    assert "Navon et al., ICML 2022, Table 2" in published and "| 0.4013 |" in published
    assert "| nash_mtl |" in ours and "0.3812 ± 0.0125" in ours and "3 seed(s)" in ours
    assert "Papers with Code" in text  # where the number was read is said
    assert "mean of the last 10 epochs" in text


def test_a_method_not_run_and_a_recipe_without_numbers() -> None:
    text = published_section("cityscapes-mtan", _board({"ew": (0.5, 0.0)}))
    assert "| ours | nash_mtl | not run |" in text
    assert published_section("celeba-resnet18", _board({"ew": (0.5, 0.0)})) == ""
