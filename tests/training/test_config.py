"""TrainConfig: validation messages, unknown keys, YAML/dict round trips."""

from __future__ import annotations

import pytest
import torch

from taskbalance.training import TrainConfig, resolve_device


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = TrainConfig()
    assert config.mode is None and config.num_workers == "auto"
    assert TrainConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "c.yaml"
    custom = config.replace(lr=0.01, tasks=["left"], labels={"left": 0.5}, size={"train": 50})
    custom.to_yaml(path)
    assert TrainConfig.from_yaml(path) == custom


def test_unknown_key_names_it_suggests_and_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"lrr": 0.1, "epochs": 2})
    msg = str(err.value)
    assert "'lrr'" in msg and "did you mean 'lr'" in msg
    assert "valid keys" in msg and "batch_size" in msg and "weight_decay" in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("optimizer", "adan", "'adam', 'adamw', 'sgd'"),
        ("scheduler", "linear", "'none', 'cosine', 'step'"),
        ("mode", "both", "'param', 'rep'"),
        ("epochs", 0, "integer >= 1"),
        ("epochs", 2.5, "integer >= 1"),
        ("batch_size", True, "integer >= 1"),
        ("steps", -1, "None or an integer >= 1"),
        ("lr", 0, "> 0"),
        ("lr", float("nan"), "> 0"),
        ("weight_decay", -1e-4, ">= 0"),
        ("device", "gpu", "'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("seed", -3, "integer >= 0"),
        ("amp", "yes", "true or false"),
        ("size", "huge", "'default', 'tiny'"),
        ("labels", {"left": 1.5}, "fractions in (0, 1]"),
        ("labels", {"left": 0.0}, "fractions in (0, 1]"),
        ("method_options", [1, 2], "mapping"),
        ("amp_dtype", "fp8", "'bfloat16', 'float16'"),
        ("nonfinite", "ignore", "'raise' or 'skip'"),
    ],
)
def test_bad_value_names_key_and_allowed_values(key, value, expected):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({key: value})
    assert repr(key) in str(err.value)
    assert expected in str(err.value)


def test_bad_method_lists_available_methods():
    with pytest.raises(ValueError) as err:
        TrainConfig(method="pcgard")
    msg = str(err.value)
    assert "'method'" in msg and "'pcgard'" in msg and "ew" in msg


def test_bad_method_option_and_benchmark_and_task():
    with pytest.raises(ValueError, match="method_options.*'colour'"):
        TrainConfig(method="ew", method_options={"colour": 1})
    with pytest.raises(ValueError, match="'benchmark'.*multidigits"):
        TrainConfig(benchmark="mnist")
    with pytest.raises(ValueError, match="'tasks'.*'middle'.*left"):
        TrainConfig(tasks=["left", "middle"])
    with pytest.raises(ValueError, match="'labels'"):
        TrainConfig(tasks=["left"], labels={"right": 0.5})


def test_amp_on_cpu_is_an_error():
    with pytest.raises(ValueError, match="'amp'.*CUDA"):
        TrainConfig(amp=True, device="cpu")


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nbatchsize: 8\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'batchsize'.*did you mean 'batch_size'"):
        TrainConfig.from_yaml(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_yaml(path)
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_numbers_in_exponent_form_are_read_as_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as the string "1e-3", and the config refused the lr
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nmethod: static\nmethod_options: {weights: [2.5E-1, 1.75]}\n")
    config = TrainConfig.from_yaml(path)
    assert config.lr == 0.001
    assert config.method_options == {"weights": [0.25, 1.75]}


def test_exponent_floats_and_the_rest_of_yaml():
    from taskbalance.data.yaml_text import load_yaml

    cases = {"1e-3": 1e-3, "-2.5E+2": -250.0, ".5e1": 5.0, "1.0e-3": 1e-3, "12": 12, "0.1": 0.1}
    for text, value in cases.items():
        got = load_yaml(text)
        assert got == value and type(got) is type(value), text
    for text in ("1e", "e5", "abc", "1e-3x"):  # not numbers: strings as before
        assert load_yaml(text) == text


def test_differences_ignore_resumable_keys():
    a = TrainConfig(epochs=2)
    b = a.replace(epochs=5, progress=False, lr=0.5).to_dict()
    assert a.differences(b) == {"lr": (1e-3, 0.5)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
        resolve_device("cuda")


def test_resolve_device_cpu_and_bad_name():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        resolve_device("tpu")
