"""A small tabular multi-task problem for ``experiment.yaml``: predict what a customer spends
(regression) and whether they leave (classification) from 12 features.

Both targets depend on the same three hidden factors of the features, so a shared layer can
learn them once. Churn is known for only part of the customers (``churn_labelled``): the
others carry ``masks["churn"] = False`` and a placeholder target, as in real records.
Everything is generated from ``seed``: the same seed gives the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from taskbalance.data import MultiTaskDataset
from taskbalance.models import MultiTaskModel

FEATURES = 12


def splits(
    *,
    seed: int = 0,
    train: int = 3000,
    val: int = 1000,
    test: int = 1000,
    churn_labelled: float = 1.0,
) -> dict[str, MultiTaskDataset]:
    """The data factory: ``{"train", "val", "test"}`` datasets of ``(inputs, targets, masks)``.

    ``churn_labelled`` is the fraction of training customers whose churn label is known
    (validation and test are fully labelled, so every method is scored on the same samples).
    """
    if not 0 < churn_labelled <= 1:
        raise ValueError(f"churn_labelled must be in (0, 1], got {churn_labelled!r}")
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(FEATURES, 3)) / np.sqrt(FEATURES)  # the hidden factors
    sizes = {"train": train, "val": val, "test": test}
    out = {}
    for name, n in sizes.items():
        x = rng.normal(size=(n, FEATURES))
        z = x @ mixing * 2.0
        spend = z[:, 0] + 0.5 * z[:, 1] ** 2 + 0.3 * rng.normal(size=n)
        churn = (z[:, 0] - z[:, 2] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
        labelled = rng.random(n) < (churn_labelled if name == "train" else 1.0)
        out[name] = MultiTaskDataset(
            torch.from_numpy(x.astype(np.float32)),
            {
                "spend": torch.from_numpy(spend.astype(np.float32)).unsqueeze(1),
                "churn": torch.from_numpy(np.where(labelled, churn, 0)),
            },
            masks={"churn": torch.from_numpy(labelled)},
        )
    return out


def build(*, in_features: int = FEATURES, width: int = 64) -> MultiTaskModel:
    """The model factory: a shared two-layer MLP, a linear head per task."""
    backbone = nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
    )
    heads = {"spend": nn.Linear(width, 1), "churn": nn.Linear(width, 2)}
    return MultiTaskModel(backbone, heads)
