"""The ``taskbalance`` command line.

::

    taskbalance methods                                   list balancing methods
    taskbalance train --benchmark B --method M ...        one training run
    taskbalance train --dataset D --data-root DIR ...     ... on a real dataset (docs/datasets.md)
    taskbalance compare --experiment FILE ...             ... on your own model and data
                                                          (docs/experiments.md)
    taskbalance compare [--methods all|m1,m2] ...         leaderboard + plots of several methods
    taskbalance tune --benchmark B [--trials N] ...       Optuna search of static task weights
    taskbalance diagnose --benchmark B [--steps N] ...    task conflicts, affinity, grouping

User errors (unknown names, bad values, config typos) print one line to stderr and exit with
status 2. Set ``TASKBALANCE_DEBUG=1`` to get the traceback instead.

Each command is one module of this package (``add_command`` adds its flags, ``run`` runs it);
``_common`` holds what they share (errors, argument types, flag groups, output-folder checks),
``_runtime`` how a command runs (threads, torchrun, the extras of optional packages).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from taskbalance.cli import annotate, compare, diagnose, methods, recipes, train, tune
from taskbalance.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    UserError,
    command_defaults,
    new_parser,
    one_line,
)
from taskbalance.cli._runtime import (
    extra_for,
    join_torchrun,
    leave_torchrun,
    one_line_warning,
    set_threads,
    start_torchrun,
)

__all__ = ["main"]

#: The command modules, in the order ``taskbalance --help`` lists them; each has
#: ``add_command(sub, defaults)``, which adds its parser with ``func`` set to its ``run(args)``.
COMMANDS = (methods, recipes, train, compare, annotate, tune, diagnose)


def _build_parser() -> argparse.ArgumentParser:
    parser, sub = new_parser()
    defaults = command_defaults()
    for command in COMMANDS:
        command.add_command(sub, defaults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``taskbalance`` command line; returns the exit status."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, argparse errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USER_ERROR)
    args.argv = argv  # which flags were given explicitly (a recipe yields to those)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    debug = os.environ.get("TASKBALANCE_DEBUG", "") not in ("", "0")
    import warnings

    import torch

    # main() may be called in-process (tests, scripts): put back what it changes.
    saved_threads, saved_showwarning = torch.get_num_threads(), warnings.showwarning
    warnings.showwarning = one_line_warning
    joined = False
    try:
        joined = join_torchrun(args)
        launched = start_torchrun(args, argv)
        if launched is not None:
            return launched
        if hasattr(args, "threads"):
            set_threads(args.threads)
        return func(args)
    except KeyboardInterrupt:
        print("taskbalance: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as err:
        if debug or extra_for(err.name) is None:
            raise
        package, extra = extra_for(err.name)  # type: ignore[misc]
        print(
            f"taskbalance {args.command}: error: this command needs {package}, which is not "
            f'installed; install the {extra!r} extra: pip install "taskbalance[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except (UserError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"taskbalance {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = saved_showwarning
        torch.set_num_threads(saved_threads)
        if joined:
            leave_torchrun()
