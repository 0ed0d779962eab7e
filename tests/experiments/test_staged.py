"""Staged training: schedule content, validation, frozen parts really fixed, per-stage balancing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from taskbalance.data import MultiTaskDataset
from taskbalance.experiments.staged import (
    Stage,
    default_schedule,
    run_stages,
    validate_schedule,
)
from taskbalance.models import MultiTaskModel
from taskbalance.tasks import classification_task

TASKS = ("a", "b", "c")


def _model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
    heads = {
        "a": nn.Linear(16, 3),
        "b": nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)),
        "c": nn.Linear(16, 4),
    }
    return MultiTaskModel(backbone, heads)


def _tasks():
    return [
        classification_task("a", 3),
        classification_task("b", 2),
        classification_task("c", 4),
    ]


def _dataset(n: int, seed: int, partial: bool) -> MultiTaskDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    targets = {
        "a": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(),
        "b": (x[:, 2] > 0).long(),
        "c": torch.randint(0, 4, (n,), generator=g),
    }
    masks = None
    if partial:
        masks = {"c": torch.arange(n) % 4 == 0}  # c labelled on 25 %
    return MultiTaskDataset(x, targets, masks)


def _loaders():
    train = _dataset(40, 0, partial=True)
    gen = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=8, shuffle=True, generator=gen),
        DataLoader(_dataset(16, 1, partial=False), batch_size=8),
        DataLoader(_dataset(16, 2, partial=False), batch_size=8),
    )


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bitwise_equal(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    after = module.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------ Stage


def test_stage_normalises_and_validates() -> None:
    stage = Stage(["a", "b"], freeze="backbone", epochs=2, lr=1e-4)  # type: ignore[arg-type]
    assert stage.tasks == ("a", "b") and stage.freeze == ("backbone",)
    with pytest.raises(ValueError, match="at least one task"):
        Stage(())
    with pytest.raises(ValueError, match="twice"):
        Stage(("a", "a"))
    with pytest.raises(ValueError, match="epochs"):
        Stage(("a",), epochs=0)
    with pytest.raises(ValueError, match="lr"):
        Stage(("a",), lr=-1.0)


# ------------------------------------------------------------------------------------ schedule


def test_default_schedule_best_labelled_first_then_rest_frozen() -> None:
    stages = default_schedule({"seg": 1.0, "depth": 0.2, "normals": 1.0}, epochs=3, rest_epochs=2)
    assert [s.tasks for s in stages] == [("seg", "normals"), ("depth",)]
    assert [s.freeze for s in stages] == [(), ("backbone",)]
    assert [s.epochs for s in stages] == [3, 2]
    assert all(s.lr is None for s in stages)


def test_default_schedule_ties_and_several_levels() -> None:
    stages = default_schedule({"x": 0.5, "y": 0.2, "z": 0.5})
    assert stages[0].tasks == ("x", "z")  # every task with the max fraction
    assert stages[1].tasks == ("y",)
    assert len(default_schedule({"x": 0.3, "y": 0.3})) == 1  # nothing left for a second stage


def test_default_schedule_finetune_rounds() -> None:
    stages = default_schedule(
        {"a": 1.0, "b": 0.1}, epochs=2, finetune_rounds=2, finetune_epochs=1, lr=1e-3
    )
    assert len(stages) == 4
    for s in stages[2:]:
        assert s.tasks == ("a", "b") and s.freeze == () and s.epochs == 1
        assert s.lr == pytest.approx(1e-4)
    tuned = default_schedule({"a": 1.0, "b": 0.1}, finetune_rounds=1, finetune_lr=5e-5)
    assert tuned[-1].lr == 5e-5


def test_default_schedule_bad_input() -> None:
    with pytest.raises(ValueError, match="no label at all"):
        default_schedule({"a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        default_schedule({"a": 1.5})
    with pytest.raises(ValueError, match="non-empty"):
        default_schedule({})
    with pytest.raises(ValueError, match="finetune_rounds"):
        default_schedule({"a": 1.0}, finetune_rounds=-1)


# ------------------------------------------------------------------------------------ validation


def test_validate_schedule_errors() -> None:
    model, tasks = _model(), _tasks()
    with pytest.raises(ValueError, match="unknown task"):
        validate_schedule(model, tasks, [Stage(("a", "nope"))])
    with pytest.raises(ValueError, match="cannot freeze unknown part"):
        validate_schedule(model, tasks, [Stage(("a",), freeze=("decoder",))])
    with pytest.raises(ValueError, match="no trainable parameter"):
        validate_schedule(model, tasks, [Stage(("c",), freeze=("backbone", "c"))])
    with pytest.raises(ValueError, match="no stage"):
        validate_schedule(model, tasks, [])
    # validation leaves nothing frozen behind
    assert model.frozen_parts == frozenset()
    assert all(p.requires_grad for p in model.parameters())


def test_run_stages_rejects_bad_schedule_before_training() -> None:
    model = _model()
    before = _snapshot(model)
    train, val, _ = _loaders()
    bad = [Stage(("a",)), Stage(("c",), freeze=("backbone", "c"))]
    with pytest.raises(ValueError, match="no trainable parameter"):
        run_stages(model, _tasks(), bad, train, val)
    assert _bitwise_equal(before, model)  # the valid first stage did not run either


# ------------------------------------------------------------------------------------ training


def test_frozen_parts_stay_bitwise_fixed_and_balancer_sees_stage_tasks() -> None:
    model, tasks = _model(), _tasks()
    train, val, test = _loaders()
    stages = [
        Stage(("a", "b"), epochs=1, name="first"),
        Stage(("c",), freeze=("backbone",), epochs=2, name="second"),
    ]
    seen: list[dict] = []

    def hook(index, stage, trainer) -> None:
        seen.append(
            {
                "index": index,
                "num_tasks": trainer.method.num_tasks,
                "trainable": list(trainer.trainable_tasks),
                "frozen": set(model.frozen_parts),
                "backbone": _snapshot(model.backbone),
                "heads": {t: _snapshot(model.heads[t]) for t in TASKS},
            }
        )

    result = run_stages(
        model, tasks, stages, train, val, test, method="uw", steps=3, on_stage_start=hook
    )

    # the method balanced exactly the stage's tasks
    assert [s["num_tasks"] for s in seen] == [2, 1]
    assert [s["trainable"] for s in seen] == [["a", "b"], ["c"]]
    assert [r.method_num_tasks for r in result.stages] == [2, 1]
    # stage 1 froze the head of c (not trained); stage 2 the backbone and the heads of a and b
    assert seen[0]["frozen"] == {"c"}
    assert seen[1]["frozen"] == {"backbone", "a", "b"}

    # stage 1 trained the backbone and a, b but left c's head untouched
    s2 = seen[1]
    assert not torch.equal(seen[0]["backbone"]["0.weight"], s2["backbone"]["0.weight"])
    assert not torch.equal(seen[0]["heads"]["a"]["weight"], s2["heads"]["a"]["weight"])
    assert _bitwise_equal(seen[0]["heads"]["c"], model.heads["c"]) is False  # trained in stage 2
    assert torch.equal(seen[0]["heads"]["c"]["weight"], s2["heads"]["c"]["weight"])

    # stage 2: backbone (weights AND BatchNorm statistics) and heads a, b bitwise unchanged
    assert _bitwise_equal(s2["backbone"], model.backbone)
    assert _bitwise_equal(s2["heads"]["a"], model.heads["a"])
    assert _bitwise_equal(s2["heads"]["b"], model.heads["b"])  # includes its BatchNorm buffers
    head_c = model.heads["c"]
    assert isinstance(head_c.weight, torch.Tensor)
    assert not torch.equal(s2["heads"]["c"]["weight"], head_c.weight)

    # afterwards every part is trainable again and frozen parts got no gradient
    assert model.frozen_parts == frozenset()
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for t in ("a", "b") for p in model.heads[t].parameters())

    # final metrics: every task, from the last epoch of the last stage
    assert result.test is not None
    assert set(result.val) == set(TASKS) and set(result.test) == set(TASKS)
    assert result.val == result.stages[-1].result.history[-1]["val"]
    assert [h["stage"] for h in result.history] == ["first", "second", "second"]


def test_heads_of_other_tasks_get_no_gradient_while_backbone_trains() -> None:
    model, tasks = _model(), _tasks()
    train, val, _ = _loaders()
    grads: dict[str, list] = {"a": [], "c": []}

    def hook(index, stage, trainer) -> None:
        step = trainer.train_step

        def watched(batch, stats=None):
            info = step(batch, stats)
            grads["a"].append(model.heads["a"].weight.grad is not None)
            grads["c"].append(model.heads["c"].weight.grad)
            return info

        trainer.train_step = watched

    run_stages(model, tasks, [Stage(("a",), epochs=1)], train, val, steps=2, on_stage_start=hook)
    assert grads["a"] == [True, True]
    assert grads["c"] == [None, None]


def test_parts_frozen_by_the_caller_stay_frozen(tmp_path) -> None:
    model, tasks = _model(), _tasks()
    model.freeze("b")
    before = _snapshot(model.heads["b"])
    train, val, _ = _loaders()
    result = run_stages(
        model,
        tasks,
        default_schedule({"a": 1.0, "b": 1.0, "c": 0.25}, epochs=1),
        train,
        val,
        steps=1,
        out_dir=tmp_path,
    )
    assert model.frozen_parts == frozenset({"b"})
    assert _bitwise_equal(before, model.heads["b"])
    assert (tmp_path / "results.json").is_file()
    assert (tmp_path / "1-backbone+best" / "results.json").is_file()
    assert [r.stage.name for r in result.stages] == ["backbone+best", "rest"]
