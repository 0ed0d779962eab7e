"""What the command modules share: the user error and exit statuses, argument types, flag
groups, and the checks of output folders and data flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
EXIT_INTERRUPTED = 130
#: The default thread count never exceeds this: the built-in benchmarks' small networks gain
#: little from more threads, and a busy machine loses a lot from oversubscription.
MAX_DEFAULT_THREADS = 4


class UserError(Exception):
    """An error caused by the command line or config (reported as one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------- arg types
def _int_at_least(text: str, low: int) -> int:
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def steps_or_all(text: str) -> int | None:
    if text.strip().lower() in ("all", "none"):
        return None
    return positive_int(text)


def _parse_value(text: str) -> Any:
    import yaml

    from taskbalance.data.yaml_text import load_yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def key_value(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as YAML, ``a,b,c`` (no brackets) as a list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    raw = raw.strip()
    if "," in raw and not raw.startswith(("[", "{", '"', "'")):
        return key, [_parse_value(part.strip()) for part in raw.split(",")]
    return key, _parse_value(raw)


def log(message: str) -> None:
    print(message, flush=True)


def one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = str(err.args[0]) if err.args else text
    return " ".join(text.split())


def check_out(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` if the command can write its folder there (nothing is created yet), else a
    ``UserError`` naming ``option``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {str(out)!r} is a file; give a folder for the results")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{option} {str(out)!r}: {str(existing)!r} is a file, so the folder cannot be "
            "created; give another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} {str(out)!r}: {str(existing)!r} is not writable; give a folder you can "
            "write to"
        )
    return out


def out_folder(
    args: argparse.Namespace, default: str, names: Sequence[str] = (), what: str = ""
) -> Path:
    """The ``--out`` folder (default ``runs/<default>``), checked (:func:`check_out`); with
    ``names``, also prepared for the command that writes them (:func:`prepare_out`)."""
    out = check_out(args.out or Path("runs") / default, "--out")
    if names:
        prepare_out(out, names, args.overwrite, what)
    return out


def prepare_out(out: Path, names: Sequence[str], overwrite: bool, what: str) -> None:
    """Delete temporary files a killed call left in ``out``; with ``--overwrite``, also what an
    earlier ``what`` wrote there (``names`` only)."""
    from taskbalance.fileio import remove_stale_temporaries
    from taskbalance.training.distributed_run import in_process_group, on_rank0
    from taskbalance.training.rundir import clear_run, held_results

    def prepare() -> None:
        remove_stale_temporaries(out)  # left by a call killed while writing its report
        if overwrite and held_results(out, names):
            removed = clear_run(out, names)
            log(f"--overwrite: removed the earlier {what} from {out} ({', '.join(removed)})")

    if in_process_group():  # under torchrun rank 0 alone reads and writes --out
        on_rank0(prepare, f"preparing {out}")
    else:
        prepare()


def data_name(args: argparse.Namespace) -> str:
    if args.experiment is not None:
        return experiment_name(args.experiment)
    return str(getattr(args, "recipe", None) or args.dataset or args.benchmark)


def experiment_name(path: str) -> str:
    from taskbalance.data.experiment import parse_experiment_file

    return parse_experiment_file(path).name


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``dataset``, ``data_root``, ``dataset_options`` and ``experiment`` of compare's and
    tune's settings."""
    has_data = args.dataset is not None or getattr(args, "recipe", None) is not None
    if not has_data and (args.data_root is not None or args.dataset_option):
        flag = "--data-root" if args.data_root is not None else "--dataset-option"
        raise UserError(f"{flag} applies to a real dataset: give --dataset NAME too")
    if args.experiment is not None and args.dataset is not None:
        raise UserError("give --dataset or --experiment, not both: a run trains on one")
    return {
        "experiment": args.experiment,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "dataset_options": dict(args.dataset_option) if args.dataset_option else None,
    }


def require_data(args: argparse.Namespace) -> None:
    """Exactly one of ``--benchmark``, ``--dataset`` and ``--experiment`` (tune, diagnose);
    ``--recipe`` names a dataset too (``--dataset`` may repeat the recipe's)."""
    flags = {"--benchmark": args.benchmark, "--dataset": args.dataset,
             "--experiment": args.experiment}  # fmt: skip
    given = [flag for flag, value in flags.items() if value is not None]
    if getattr(args, "recipe", None) is not None:  # it sets the dataset (and refuses another)
        if given not in ([], ["--dataset"]):
            raise UserError(f"--recipe sets a published dataset and model; drop {given[-1]}")
        return
    if len(given) != 1:
        said = {0: "neither given", 2: "both {} and {} given"}.get(len(given), "all three given")
        raise UserError(
            "give --benchmark NAME, --dataset NAME --data-root DIR or --experiment FILE "
            f"({said.format(*given)})"
        )
    if args.benchmark is None:
        from taskbalance.training.config import DEFAULT_BENCHMARK

        args.benchmark = DEFAULT_BENCHMARK


#: Flags (argparse dests) that choose or size a built-in benchmark.
_BENCHMARK_FLAGS = ("benchmark", "size")


def refuse_benchmark_flags(
    given: Collection[str], *, dataset: str | None, experiment: Any, recipe: str | None
) -> None:
    """``--benchmark`` and ``--size`` (``given``: the flags given explicitly, argparse dests)
    choose and size a built-in benchmark; when the run trains on other data (a ``dataset``, an
    ``experiment`` file, or a ``recipe``'s dataset) they are refused, not ignored."""
    sizes = "--dataset-option sets a dataset's options"
    if experiment is not None:
        other, sizes = "the run trains on the --experiment file's data", "its data_options size it"
    elif recipe is not None:
        from taskbalance.training.recipes import get_recipe

        other = f"--recipe {recipe} trains on dataset {get_recipe(recipe).dataset!r}"
    elif dataset is not None:
        other = f"the run trains on dataset {dataset!r}"
    else:
        return
    for dest in _BENCHMARK_FLAGS:
        if dest in given:
            flag = f"--{dest}"
            raise UserError(
                f"{flag} applies to the built-in benchmarks, but {other}; drop {flag}"
                + (f" ({sizes})" if dest == "size" else "")
            )


def optional_training_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.lr is not None:
        options["lr"] = args.lr
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    return options


# ---------------------------------------------------------------------------------- flags
def add_training_flags(
    p: argparse.ArgumentParser, *, defaults: dict[str, Any], out_help: str
) -> None:
    """Flags shared by compare and tune (train has its own: its defaults come from the config)."""
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=defaults["epochs"],
        help="epochs per run (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=steps_or_all,
        default=defaults["steps"],
        help="cap on training steps per epoch, or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        choices=("tiny", "default"),
        default=defaults["size"],
        help="benchmark size (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the trainer's)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="training batch size (default: the trainer's)",
    )
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what an earlier call wrote to the --out folder, then start afresh "
        "(without it, a call continues an earlier one with the same settings)",
    )
    add_threads_flag(p)


def add_data_flags(p: argparse.ArgumentParser, *, options: bool = True) -> None:
    """``--dataset NAME --data-root DIR [--dataset-option KEY=VALUE]``: a real dataset."""
    p.add_argument(
        "--dataset",
        default=None,
        help="a real dataset instead of a built-in benchmark: nyuv2, cityscapes, fingers, ... "
        "(layouts and how to get them: docs/datasets.md)",
    )
    p.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder")
    p.add_argument(
        "--experiment",
        default=None,
        metavar="FILE",
        help="your own model, data and tasks: a YAML experiment file naming the model and data "
        "factories (schema: docs/experiments.md)",
    )
    if options:
        p.add_argument(
            "--dataset-option",
            action="append",
            type=key_value,
            metavar="KEY=VALUE",
            help="dataset option, repeatable, e.g. num_classes=19 (cityscapes) or "
            "val_fraction=0 (validate on the test split)",
        )
    else:
        p.set_defaults(dataset_option=None)


def add_nproc_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="train with N processes on this machine (starts torchrun; every step is the "
        "step of the union of their batches, see docs/distributed.md)",
    )


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: the CPUs not busy with other work, at most "
        f"{MAX_DEFAULT_THREADS}; the choice is printed)",
    )


def explicit_dests(args: argparse.Namespace, add_command: Any) -> set[str]:
    """The flags (argparse dests) given on the command line ``args.argv``, found by parsing it
    again with every default suppressed; ``add_command`` adds the command it is for."""
    parser, sub = new_parser()
    add_command(sub, command_defaults())
    for p in [parser, *sub.choices.values()]:
        p._defaults.clear()
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(args.argv))) - {"command"}


#: The data settings a recipe sets (compare's and tune's settings fields of the same name).
_RECIPE_DATA = ("dataset", "data_root", "dataset_options")


def recipe_settings(
    args: argparse.Namespace, settings: Any, fields: Sequence[str], add_command: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Recipe ``args.recipe`` applied under the flags given explicitly, for compare's or tune's
    settings: ``(fields, extra)``, the values of ``dataset``, ``data_root``,
    ``dataset_options``, ``steps`` and of ``fields`` (settings fields named like their flags:
    ``epochs``, ``device``, ...), and ``settings.extra`` with the rest of the recipe's
    TrainConfig (model options, optimizer, schedule, ...) on top."""
    from taskbalance.training.recipes import recipe_config

    if getattr(settings, "experiment", None) is not None:
        raise UserError("--recipe sets a published dataset and model; drop --experiment or it")
    given = explicit_dests(args, add_command)
    explicit = {k: getattr(settings, k) for k in (*fields, "steps") if k in given}
    explicit.update({k: getattr(settings, k) for k in _RECIPE_DATA if getattr(settings, k)})
    cfg = recipe_config(args.recipe, explicit)
    values = {k: cfg.pop(k, None) for k in _RECIPE_DATA}
    values.update({k: cfg.pop(k) for k in fields})
    values["steps"] = cfg.pop("steps", None)  # whole epochs unless --steps
    return values, {**settings.extra, **cfg}


def add_recipe_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="a published protocol (see 'taskbalance recipes'); flags given override its values",
    )


def new_parser() -> tuple[Parser, Any]:
    """The ``taskbalance`` parser without its commands, and the action its commands are added
    to (``add_command(sub, defaults)`` of each command module)."""
    from taskbalance import __version__

    parser = Parser(
        prog="taskbalance",
        description="Train multi-task networks with every established way of balancing tasks.",
        epilog="Run 'taskbalance COMMAND --help' for the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"taskbalance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    return parser, sub


def command_defaults() -> dict[str, Any]:
    """``epochs``, ``steps`` and ``size`` defaults of the commands that take compare's."""
    from taskbalance.experiments.compare import DEFAULT_EPOCHS, DEFAULT_SIZE, DEFAULT_STEPS

    return {"epochs": DEFAULT_EPOCHS, "steps": DEFAULT_STEPS, "size": DEFAULT_SIZE}
