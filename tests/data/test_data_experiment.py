"""Experiment files (``docs/experiments.md``): the loader builds tasks, data and model from a
user's factories, and every kind of mistake gives one error naming the key and the fix."""

from __future__ import annotations

import random
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from taskbalance.data.experiment import (
    ExperimentError,
    experiment_tasks,
    load_experiment,
    parse_experiment_file,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_experiment" / "experiment.yaml"

MODULE = """
import torch
from torch import nn
from taskbalance.data import MultiTaskDataset
from taskbalance.models import MultiTaskModel
from taskbalance.tasks import regression_task

def splits(n=8, names=("a", "b"), two_tuples=False):
    g = torch.Generator().manual_seed(0)
    def one():
        x = torch.randn(n, 3, generator=g)
        return MultiTaskDataset(x, {t: torch.randn(n, 1, generator=g) for t in names})
    out = {"train": one(), "val": one(), "test": one()}
    if two_tuples:
        out = {k: [(d[i][0], d[i][1]) for i in range(len(d))] for k, d in out.items()}
    return out

def build(width=4, outputs=("a", "b"), out_dim=1, in_dim=3):
    return MultiTaskModel(nn.Linear(in_dim, width), {t: nn.Linear(width, out_dim) for t in outputs})

def plain():
    return nn.Linear(3, 1)

def not_a_model():
    return {"a": 1}

def no_test():
    s = splits()
    del s["test"]
    return s

def a_task(name, scale=1.0):
    return regression_task(name)

def wrong_name(name):
    return regression_task("other")

def not_a_task(name):
    return 3

NUMBER = 3
"""


@pytest.fixture
def make(tmp_path, monkeypatch):
    """``make(**changes)`` writes a module of factories and an experiment file using it
    (``changes`` replace top-level keys; ``None`` removes one) and returns the file's path."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds python_path folders
    module = f"exp_{uuid.uuid4().hex[:12]}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{module}.py").write_text(MODULE)

    def write(**changes):
        data = {
            "name": "toy",
            "python_path": "code",
            "model": f"{module}:build",
            "data": f"{module}:splits",
            "tasks": [{"name": "a", "kind": "regression"}, {"name": "b", "kind": "regression"}],
        }
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path = tmp_path / "experiment.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False).replace("MOD:", f"{module}:"))
        return path

    write.module = module  # type: ignore[attr-defined]  # the module name, for the tests
    return write


def _fails(path, *needles, build=False):
    """Loading ``path`` (and building the model with ``build``) raises one ExperimentError
    whose message names the file and every needle."""
    with pytest.raises(ExperimentError) as info:
        source = load_experiment(path)
        if build:
            source.build_model()
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ------------------------------------------------------------------------------ the example
def test_example_loads_with_its_tasks_data_and_model():
    source = load_experiment(EXAMPLE)
    assert source.name == "customers"
    assert source.task_names == ["spend", "churn"]
    kinds = {t.name: (t.kind, t.primary_metric) for t in source.tasks}
    assert kinds == {"spend": ("regression", "rmse"), "churn": ("classification", "accuracy")}
    assert [len(source.train), len(source.val), len(source.test)] == [3000, 1000, 1000]
    assert source.input_shape == (12,)
    # churn_labelled: 0.6 of the training customers keep their label (binomial, 3000 draws:
    # std 0.009), validation and test are fully labelled
    fraction = source.train.label_fractions()
    assert abs(fraction["churn"] - 0.6) < 0.04 and fraction["spend"] == 1.0
    assert source.val.label_fractions()["churn"] == 1.0
    unlabelled = ~source.train.masks["churn"]
    assert int(source.train.targets["churn"][unlabelled].abs().sum()) == 0  # placeholder zeros
    model = source.build_model(width=8)
    outputs = model(source.train[[0, 1, 2]][0])
    assert outputs["spend"].shape == (3, 1) and outputs["churn"].shape == (3, 2)
    backbone = model.backbone
    assert isinstance(backbone, nn.Sequential) and isinstance(backbone[0], nn.Linear)
    first = backbone[0]
    assert first.out_features == 8  # the option overrides the file's width 64


def test_example_data_is_deterministic():
    first, second = load_experiment(EXAMPLE), load_experiment(EXAMPLE)
    assert torch.equal(first.test.inputs, second.test.inputs)
    assert torch.equal(first.train.targets["spend"], second.train.targets["spend"])
    assert torch.equal(first.train.masks["churn"], second.train.masks["churn"])


def test_build_model_leaves_the_random_streams_as_they_were():
    source = load_experiment(EXAMPLE)
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    source.build_model()  # consumes torch draws for the initialisation only
    after_build = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    source._model_factory(width=64)  # the same initialisation without the output check
    plain = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(after_build[0], plain[0]) and after_build[1:] == plain[1:]


def test_tasks_without_data(make):
    tasks = experiment_tasks(make(data="MOD:missing_function"))  # the data factory is not used
    assert [t.name for t in tasks] == ["a", "b"]
    assert parse_experiment_file(make()).task_names == ["a", "b"]


def test_two_tuple_items_and_task_options(make):
    path = make(
        data_options={"two_tuples": True},
        model_options={"outputs": ["a", "c"]},
        tasks=[
            {"name": "a", "kind": "regression", "loss": "mse", "primary_metric": "mae"},
            {"name": "c", "factory": "MOD:a_task", "options": {"scale": 2.0}},
        ],
    )
    with pytest.raises(ExperimentError, match="targets of an item are"):
        load_experiment(path)
    path = make(
        data_options={"two_tuples": True, "names": ["a", "c"]},
        model_options={"outputs": ["a", "c"]},
        tasks=[
            {"name": "a", "kind": "regression", "loss": "mse", "primary_metric": "mae"},
            {"name": "c", "factory": "MOD:a_task", "options": {"scale": 2.0}},
        ],
    )
    source = load_experiment(path)
    a, c = source.tasks
    assert (a.primary_metric, c.primary_metric) == ("mae", "mae")
    # mse loss: the loss of a known prediction is the mean squared error
    pred, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert float(a.loss(pred, target)) == pytest.approx(5.0)
    source.build_model()


# ------------------------------------------------------------------------------ the file
def test_unknown_top_level_key_suggests(make):
    _fails(make(modle="x:y"), "'modle'", "did you mean 'model'", "valid keys")


def test_missing_key(make):
    _fails(make(data=None), "key 'data'", "missing", "module:attribute")


def test_bad_target_format(make):
    _fails(make(model="mypkg.nets.build"), "key 'model'", "'module:attribute'", "mypkg.nets.build")


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    _fails(bad, "not valid YAML")
    bad.write_text("- a\n- b\n")
    _fails(bad, "must hold a mapping")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experiment(tmp_path / "none.yaml")


def test_python_path_must_be_a_folder(make):
    _fails(make(python_path="nowhere"), "key 'python_path'", "'nowhere' is not a folder")


def test_bad_name(make):
    _fails(make(name="my experiment"), "key 'name'", "letters, digits")


# ------------------------------------------------------------------------------ imports
def test_module_not_importable(make):
    _fails(make(model="nosuchpkg_xyz.nets:build"), "key 'model'", "cannot import module "
           "'nosuchpkg_xyz.nets'", "no module 'nosuchpkg_xyz'", "python_path")  # fmt: skip


def test_module_that_fails_to_import(make, tmp_path):
    (tmp_path / "code" / f"{make.module}_broken.py").write_text("import nosuchdep_xyz\n")
    _fails(make(model=f"{make.module}_broken:build"), "key 'model'", "importing module",
           "nosuchdep_xyz")  # fmt: skip


def test_attribute_missing_suggests(make):
    _fails(make(model="MOD:buld"), "key 'model'", "has no attribute 'buld'", "did you mean 'build'")


def test_attribute_not_callable(make):
    _fails(make(model="MOD:NUMBER"), "key 'model'", "is a int, not a callable")


# ------------------------------------------------------------------------------ factories
def test_model_option_not_accepted(make):
    _fails(make(model_options={"widht": 3}), "key 'model_options'", "widht", "width, outputs",
           build=True)  # fmt: skip


def test_model_factory_returns_wrong_type(make):
    _fails(make(model="MOD:not_a_model"), "key 'model'", "returned a dict", "nn.Module",
           build=True)  # fmt: skip


def test_model_without_shared_parameters(make):
    _fails(make(model="MOD:plain"), "returned a Linear without shared_parameters()", build=True)


def test_model_outputs_other_tasks(make):
    _fails(make(model_options={"outputs": ["a", "x"]}), "key 'model'", "one prediction per task",
           "['a', 'b']", "['a', 'x']", build=True)  # fmt: skip


def test_model_output_shape_does_not_fit_task(make):
    _fails(make(model_options={"out_dim": 2}), "key 'model'", "task 'a'", "[1, 2]", "[1, 1]",
           build=True)  # fmt: skip


def test_model_fails_on_a_sample(make):
    _fails(make(model_options={"in_dim": 5}), "key 'model'", "fails on one training sample",
           "inputs [1, 3]", build=True)  # fmt: skip


def test_data_split_missing(make):
    _fails(make(data="MOD:no_test"), "key 'data'", "no 'test' split", "train, val and test")


def test_data_factory_error_is_named(make):
    _fails(make(data_options={"n": "eight"}), "key 'data'", ":splits(n='eight') failed")


def test_dataset_targets_are_not_the_tasks(make):
    _fails(make(data_options={"names": ["a", "bb"]}), "key 'data'", "split 'train'",
           "missing: ['b']", "unknown: ['bb']")  # fmt: skip


# ------------------------------------------------------------------------------ tasks
def test_unknown_kind_suggests(make):
    _fails(make(tasks=[{"name": "a", "kind": "regresion"}]), "key 'tasks[0].kind'",
           "did you mean 'regression'", "factory")  # fmt: skip


def test_unknown_kind_option_and_metrics_hint(make):
    _fails(make(tasks=[{"name": "a", "kind": "regression", "los": "mse"}]),
           "key 'tasks[0].los'", "did you mean 'loss'")  # fmt: skip
    _fails(make(tasks=[{"name": "a", "kind": "regression", "metrics": ["mae"]}]),
           "key 'tasks[0].metrics'", "primary_metric")  # fmt: skip


def test_kind_option_missing_and_bad_value(make):
    _fails(make(tasks=[{"name": "a", "kind": "classification"}]), "tasks[0].num_classes",
           "missing")  # fmt: skip
    _fails(make(tasks=[{"name": "a", "kind": "regression", "loss": "huber"}]), "key 'tasks[0]'",
           "loss must be 'l1' or 'mse'")  # fmt: skip


def test_kind_and_factory_both_or_neither(make):
    _fails(make(tasks=[{"name": "a", "kind": "regression", "factory": "MOD:a_task"}]),
           "key 'tasks[0]'", "exactly one of 'kind'")  # fmt: skip
    _fails(make(tasks=[{"name": "a"}]), "key 'tasks[0]'", "exactly one of 'kind'")


def test_duplicate_task_names(make):
    entry = {"name": "a", "kind": "regression"}
    _fails(make(tasks=[entry, entry]), "key 'tasks'", "'a' is given twice")


def test_task_factory_returns_wrong_type_or_name(make):
    _fails(make(tasks=[{"name": "a", "factory": "MOD:not_a_task"}]), "key 'tasks[0].factory'",
           "returned a int", "taskbalance.tasks.Task")  # fmt: skip
    _fails(make(tasks=[{"name": "a", "factory": "MOD:wrong_name"}]), "named 'other'",
           "must be named 'a'")  # fmt: skip


def test_task_factory_option_not_accepted(make):
    _fails(make(tasks=[{"name": "a", "factory": "MOD:a_task", "options": {"scal": 1}}]),
           "key 'tasks[0].options'", "scal", "its options: scale")  # fmt: skip


def test_primary_metric_must_be_a_metric(make):
    _fails(make(tasks=[{"name": "a", "kind": "regression", "primary_metric": "rmes"}]),
           "key 'tasks[0].primary_metric'", "did you mean 'rmse'", "mae, rmse")  # fmt: skip


def test_a_registered_kind_with_a_preset_is_accepted(make, monkeypatch):
    from taskbalance.tasks import Task, TaskKind, kinds, register_kind, regression_task

    def count_task(name, scale=1.0):
        template = regression_task(name)
        return Task(name, template.loss_fn, template.metrics, kind="count_experiment_test")

    # registered for this test only: the registry is restored afterwards
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    register_kind(
        TaskKind("count_experiment_test", "[B, 1] / [B, 1]", kinds.same_shape, count_task)
    )
    entries: list[dict[str, object]] = [
               {"name": "a", "kind": "count_experiment_test", "scale": 2.0},
               {"name": "b", "kind": "regression"}]  # fmt: skip
    source = load_experiment(make(tasks=entries))
    assert [t.kind for t in source.tasks] == ["count_experiment_test", "regression"]
    entries[0]["scal"] = entries[0].pop("scale")
    _fails(make(tasks=entries), "tasks[0].scal", "did you mean 'scale'")
