"""Every ```python block of README.md runs (CI fails when an example stops working).

A block may use the names a user's script would have defined: ``model`` (a tiny two-task
MultiTaskModel with ``depth`` and ``seg`` heads), ``loader`` (two batches of
``(x, targets)``), ``depth_loss`` and ``seg_loss``; these are provided here, everything else
must come from the block itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def _user_names() -> dict[str, object]:
    from taskbalance.models import MultiTaskModel

    g = torch.Generator().manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    model = MultiTaskModel(backbone, {"depth": nn.Linear(8, 1), "seg": nn.Linear(8, 3)})
    loader = [
        (
            torch.randn(5, 4, generator=g),
            {
                "depth": torch.randn(5, 1, generator=g),
                "seg": torch.randint(0, 3, (5,), generator=g),
            },
        )
        for _ in range(2)
    ]
    return {
        "model": model,
        "loader": loader,
        "depth_loss": nn.functional.mse_loss,
        "seg_loss": nn.functional.cross_entropy,
    }


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md has no ```python block; this test would check nothing"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int) -> None:
    names = _user_names()
    model = names["model"]
    before = [p.detach().clone() for p in model.parameters()]  # type: ignore[attr-defined]
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), names)
    after = list(model.parameters())  # type: ignore[attr-defined]
    if "optimizer" in names:  # a training example: it must have trained the model
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
