"""The core needs torch and numpy only; the commands name the extra to install when one is
missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from taskbalance import cli

OPTIONAL = [
    "yaml",
    "tqdm",
    "optuna",
    "matplotlib",
    "sklearn",
    "scipy",
    "tensorboard",
    "torchmetrics",
    "torchvision",
    "pandas",
]


def test_the_library_imports_and_balances_without_any_optional_package() -> None:
    # a fresh interpreter in which importing any optional package fails, as on a core install
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        sys.meta_path.insert(0, Block())
        import torch
        import taskbalance as tb
        from taskbalance.tasks import classification_task
        from taskbalance.models import MultiTaskModel
        w = torch.nn.Linear(3, 2)
        method = tb.create("mgda", num_tasks=2)
        balancer = tb.Balancer(method, list(w.parameters()))
        out = w(torch.ones(4, 3))
        info = balancer.backward({{"a": out[:, 0].pow(2).mean(), "b": out[:, 1].mean()}})
        task = classification_task("a", num_classes=3)
        m = task.new_metrics()
        m.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        print(sorted(m.compute()), info.weights.shape[0], tb.delta_m is not None)
        print(sorted(k for k in sys.modules if k.partition(".")[0] in {OPTIONAL!r}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "[]"  # nothing optional was even attempted successfully


def test_the_command_line_names_the_extra_to_install(monkeypatch, capsys) -> None:
    def missing(_args):
        raise ModuleNotFoundError("No module named 'optuna'", name="optuna")

    parser = cli._build_parser()
    monkeypatch.setattr(cli, "_build_parser", lambda: parser)
    args = parser.parse_args(["methods"])
    monkeypatch.setattr(args, "func", missing, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    assert cli.main(["methods"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "needs optuna" in err and 'pip install "taskbalance[cli]"' in err


def test_a_missing_module_of_no_extra_is_not_disguised(monkeypatch) -> None:
    parser = cli._build_parser()
    args = parser.parse_args(["methods"])

    def missing(_args):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    monkeypatch.setattr(args, "func", missing, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    monkeypatch.setattr(cli, "_build_parser", lambda: parser)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["methods"])


def test_every_optional_package_of_the_cli_is_in_an_extra() -> None:
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["torch", "numpy"]
    extras = project["optional-dependencies"]
    from taskbalance.cli._runtime import OPTIONAL_PACKAGES

    for package, extra in OPTIONAL_PACKAGES.values():
        assert any(d.startswith(package) for d in extras[extra]), (package, extra)
