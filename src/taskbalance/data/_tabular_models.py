"""Default models of the tabular benchmarks: hard sharing and the mixture-of-experts family.

Kept apart from the generators so that generating data never imports the model code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from taskbalance.data.benchmark import check_options

#: ``arch`` values of :func:`tabular_model`
ARCHITECTURES = ("mmoe", "hard", "cgc", "ple", "dselect_k", "ltb")

DEFAULTS: dict[str, Any] = {
    "arch": "mmoe",
    "num_experts": 8,  # MMoE / DSelect-K experts; CGC / PLE shared experts
    "task_experts": 2,  # CGC / PLE experts per task
    "levels": 2,  # PLE extraction levels
    "k": 2,  # DSelect-K: experts each gate selects
    "expert_dim": 16,  # units of each expert (one ReLU layer)
    "tower_dim": 8,  # hidden units of each tower
    "bottom_dim": 128,  # hard sharing: units of the shared bottom (≈ MMoE's parameter count)
    "branch_layers": 2,  # LTB: layers of the branching stack
    "branch_dim": 32,  # LTB: units of each layer
    "gate_bias": True,  # MMoE / CGC / PLE softmax gates with a bias (the papers' have none)
    "entropy_weight": 0.0,  # DSelect-K: λ of the selectors' entropy regulariser (0: off)
    "temperature": 1.0,  # LTB: Gumbel-softmax temperature (the schedule's start)
    "anneal": 1.0,  # LTB: temperature factor per epoch (1: constant)
    "min_temperature": 0.5,  # LTB: the annealing schedule's floor
}


def tower(in_features: int, hidden: int) -> nn.Sequential:
    """``Linear -> ReLU -> Linear(·, 1)``: the regression tower of one task."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def tabular_model(
    in_features: int, tasks: Sequence[str], options: dict[str, Any], *, what: str
) -> Any:
    """The multi-task network ``options["arch"]`` for ``[B, in_features]`` inputs and one scalar
    regression output ``[B, 1]`` per task (see :data:`DEFAULTS` for the options)."""
    from taskbalance import models

    opts = check_options(options, DEFAULTS, what)
    arch = opts["arch"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{what}: unknown arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    e, h = opts["expert_dim"], opts["tower_dim"]
    if arch == "hard":
        bottom = models.experts.mlp(in_features, [opts["bottom_dim"]])
        heads = {t: tower(opts["bottom_dim"], h) for t in tasks}
        return models.MultiTaskModel(bottom, heads, task_names=list(tasks))
    towers = {t: tower(e, h) for t in tasks}
    if arch == "mmoe":
        return models.MMoE(
            in_features,
            towers,
            num_experts=opts["num_experts"],
            expert_dim=e,
            gate_bias=opts["gate_bias"],
        )
    if arch == "dselect_k":
        return models.DSelectK(
            in_features,
            towers,
            num_experts=opts["num_experts"],
            k=opts["k"],
            expert_dim=e,
            entropy_weight=opts["entropy_weight"],
        )
    if arch == "cgc":
        return models.CGC(
            in_features,
            towers,
            shared_experts=opts["num_experts"],
            task_experts=opts["task_experts"],
            expert_dim=e,
            gate_bias=opts["gate_bias"],
        )
    if arch == "ple":
        return models.PLE(
            in_features,
            towers,
            levels=opts["levels"],
            shared_experts=opts["num_experts"],
            task_experts=opts["task_experts"],
            expert_dim=e,
            gate_bias=opts["gate_bias"],
        )
    width = opts["branch_dim"]
    layers = [
        models.experts.mlp(in_features if i == 0 else width, [width])
        for i in range(opts["branch_layers"])
    ]
    schedule = {k: opts[k] for k in ("temperature", "anneal", "min_temperature")}
    return models.LTB(layers, {t: tower(width, h) for t in tasks}, **schedule)
