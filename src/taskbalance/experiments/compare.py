"""``compare``: train several balancing methods (and single-task baselines) and rank them.

Layout of the output folder ``DIR``::

    DIR/runs/<method>/seed<k>/        one training run per method and seed (``results.json`` last)
    DIR/baselines/<task>/seed<k>/     single-task baselines: method ``ew``, ``tasks=[task]``
    DIR/leaderboard.md                the leaderboard (also printed) and what sharing saves
    DIR/results.json                  every run's metrics, the aggregated leaderboard and
                                      ``sharing`` (parameters and inference time of the
                                      multi-task model against the single-task stack)
    DIR/plots/*.png                   validation curves, task weights, Pareto front, Δm% bars

A run whose ``results.json`` exists is reused, and an unfinished run resumes from its checkpoint,
so running the same command again continues an interrupted comparison. Reusing a run trained with
other settings (epochs, steps, size, ...) would mix incomparable numbers, so that is an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taskbalance.fileio import atomic_write_text
from taskbalance.validation import is_int

from . import plots
from .records import RunSummary
from .report import build_leaderboard, sharing_summary, significance_marks, to_markdown
from .transfer import negative_transfer, transfer_markdown

__all__ = [
    "DEFAULT_BENCHMARK",
    "DEFAULT_EPOCHS",
    "DEFAULT_SCHEDULER",
    "DEFAULT_SEEDS",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "STANDARD_METHODS",
    "CompareResult",
    "CompareSettings",
    "TaskInfo",
    "base_config",
    "check_compare",
    "data_name",
    "parse_pareto",
    "resolve_jobs",
    "resolve_methods",
    "run_compare",
    "run_or_reuse",
    "task_info",
]

#: Methods of ``taskbalance compare`` without ``--methods`` (those registered at run time).
STANDARD_METHODS = (
    "ew",
    "scaled",
    "uw",
    "gradnorm",
    "mgda",
    "dwa",
    "pcgrad",
    "graddrop",
    "imtl",
    "gradvac",
    "rlw",
)
DEFAULT_BENCHMARK = "multidigits"
# Defaults of a bare ``taskbalance compare``: 3 seeds, so that the leaderboard can say which
# differences exceed the seed noise (paired tests); full epochs with cosine learning-rate decay,
# so that the networks end close to converged; sized so that the 11 standard methods plus the
# two single-task baselines (39 runs) finish in about 6 minutes on 2 CPU cores (2 jobs of one
# thread each; measured, see README).
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_EPOCHS = 8
DEFAULT_STEPS: int | None = None
DEFAULT_SCHEDULER = "cosine"
DEFAULT_SIZE = "default"
# The timing pass after training: rounds x steps per configuration, interleaved (timing.py).
TIMING_ROUNDS = 5
TIMING_STEPS = 4
# What sharing saves is timed once per compare on one validation batch: a few forward passes.
SHARING_REPEATS = 3
SHARING_WARMUP = 1

Log = Callable[[str], None]


@dataclass(frozen=True)
class TaskInfo:
    """What the leaderboard needs to know about a benchmark's tasks."""

    names: list[str]
    primary: dict[str, str]
    higher_is_better: dict[str, dict[str, bool]]


def task_info(benchmark: str | Mapping[str, Any], size: Any = "default") -> TaskInfo:
    """Task names, primary metrics and metric directions (no data generated or read) of a
    built-in ``benchmark`` of ``size``, or of the data of a ``TrainConfig`` dict (a benchmark or
    a real dataset)."""
    from taskbalance.training import TrainConfig
    from taskbalance.training.sources import data_tasks

    if isinstance(benchmark, str):
        config = TrainConfig(benchmark=benchmark, size=size)
    else:
        config = TrainConfig.from_dict(benchmark)
    tasks = data_tasks(config)
    return TaskInfo(
        names=[t.name for t in tasks],
        primary={t.name: t.primary_metric for t in tasks},
        higher_is_better={t.name: dict(t.higher_is_better) for t in tasks},
    )


def resolve_methods(
    spec: str | Sequence[str] | None,
    num_tasks: int,
    log: Log = print,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Method names from ``"all"``, ``"m1,m2"``, a list, or ``None`` (the standard methods).

    ``all`` is every registered method that can be created without options (``static`` needs
    weights), or has some in ``options`` (``{method: {key: value}}``). ``None`` keeps the
    standard methods that are registered and notes the others. An explicitly named unknown
    method is a ``ValueError`` listing the available ones.
    """
    import taskbalance

    available = taskbalance.available_methods()
    if spec is None:
        missing = [m for m in STANDARD_METHODS if m not in available]
        if missing:
            log(f"note: standard method(s) not available in this version: {', '.join(missing)}")
        methods = [m for m in STANDARD_METHODS if m in available]
    elif isinstance(spec, str) and spec.strip() == "all":
        methods = []
        for name in available:
            if name in (options or {}):  # usable with its options (checked later)
                methods.append(name)
                continue
            try:
                taskbalance.create(name, num_tasks)
            except (ValueError, TypeError):
                continue  # needs options (e.g. static weights)
            methods.append(name)
    else:
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        methods = [n.strip() for n in names if n.strip()]
        unknown = [m for m in methods if m not in available]
        if unknown:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}; available: {', '.join(available)} "
                "(or 'all')"
            )
        if len(set(methods)) != len(methods):
            raise ValueError(f"method listed twice in {','.join(methods)}")
    if not methods:
        raise ValueError("no methods to compare")
    return methods


def parse_pareto(
    spec: str | None, info: TaskInfo
) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """Two ``(task, metric)`` pairs from ``"taskA.metric,taskB.metric"`` (a bare task name means
    its primary metric). ``None`` gives the primary metrics of the first two tasks (or the first
    two metrics of a single task; ``None`` when there are not two metrics)."""
    if spec is None:
        if len(info.names) >= 2:
            a, b = info.names[:2]
            return (a, info.primary[a]), (b, info.primary[b])
        pairs = [(t, m) for t in info.names for m in info.higher_is_better[t]]
        return (pairs[0], pairs[1]) if len(pairs) >= 2 else None
    parts = [p.strip() for p in spec.split(",")]
    valid = [f"{t}.{m}" for t in info.names for m in info.higher_is_better[t]]
    if len(parts) != 2:
        raise ValueError(f"--pareto needs two metrics 'task.metric,task.metric'; valid: {valid}")
    out = []
    for part in parts:
        task, _, metric = part.partition(".")
        metric = metric or info.primary.get(task, "")
        if task not in info.higher_is_better or metric not in info.higher_is_better[task]:
            raise ValueError(f"unknown Pareto metric {part!r}; valid: {', '.join(valid)}")
        out.append((task, metric))
    return out[0], out[1]


def run_or_reuse(config: Mapping[str, Any], *, label: str = "", log: Log = print) -> dict[str, Any]:
    """Train ``config`` (a ``TrainConfig`` dict with ``out_dir``) through the runner
    (:func:`taskbalance.training.runner.run`: a finished run is reused, an unfinished one
    resumed, a run of other settings refused) and return its ``results.json`` content."""
    from taskbalance.training.rundir import load_results_file
    from taskbalance.training.runner import run

    result = run(config, log=log, label=label)
    if result.out_dir is not None and (result.out_dir / "results.json").exists():
        return load_results_file(result.out_dir / "results.json")
    return result.to_dict()


@dataclass
class CompareSettings:
    """Settings of a comparison (the ``taskbalance compare`` flags)."""

    benchmark: str = DEFAULT_BENCHMARK
    dataset: str | None = None  # a real dataset instead of the benchmark (docs/datasets.md)
    data_root: str | None = None
    dataset_options: dict[str, Any] | None = None
    experiment: str | None = None  # an experiment file instead (docs/experiments.md)
    methods: str | Sequence[str] | None = None  # None: the standard methods
    seeds: Sequence[int] = DEFAULT_SEEDS
    epochs: int = DEFAULT_EPOCHS
    steps: int | None = DEFAULT_STEPS
    scheduler: str = DEFAULT_SCHEDULER
    size: str = DEFAULT_SIZE
    device: str = "cpu"
    out_dir: str | Path = "runs/compare"
    lr: float | None = None
    batch_size: int | None = None
    pareto: str | None = None
    jobs: int | None = None  # runs trained side by side; None: see resolve_jobs
    timing: bool = True  # interleaved timing pass after training (timing.py)
    timing_rounds: int = TIMING_ROUNDS
    timing_steps: int = TIMING_STEPS
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields
    recipe: str | None = None  # its published rows are printed beside ours (published.py)
    # {method: {option: value}}: taskbalance.create's options of that method's runs
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class CompareResult:
    """What :func:`run_compare` produced; :meth:`load` reads it back from its folder.

    ``leaderboard`` is :func:`~.report.build_leaderboard`'s JSON-ready data; ``runs`` and
    ``baselines`` are every training run (method runs, single-task baselines) as
    :class:`~.records.RunSummary`."""

    out_dir: Path
    leaderboard: dict[str, Any]
    markdown: str
    plots: dict[str, Path]
    seconds: float
    runs: list[RunSummary] = field(default_factory=list)
    baselines: list[RunSummary] = field(default_factory=list)

    @classmethod
    def load(cls, out_dir: str | Path) -> CompareResult:
        """The comparison in ``out_dir`` (its ``results.json`` and ``leaderboard.md``)."""
        folder = Path(out_dir)
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        return cls(
            out_dir=folder,
            leaderboard=data["leaderboard"],
            markdown=(folder / "leaderboard.md").read_text(encoding="utf-8"),
            plots={k: Path(v) for k, v in data.get("plots", {}).items()},
            seconds=data["seconds"],
            runs=[RunSummary.from_json(r) for r in data.get("runs", [])],
            baselines=[RunSummary.from_json(r) for r in data.get("baselines", [])],
        )


def base_config(s: CompareSettings | Any, **fixed: Any) -> dict[str, Any]:
    """The ``TrainConfig`` keys every run of a comparison or a tuning study shares, from settings
    with ``benchmark``, ``epochs``, ``steps``, ``size``, ``device``, ``lr``, ``batch_size``,
    optionally ``scheduler``, ``dataset`` / ``data_root`` / ``dataset_options`` or
    ``experiment``, and ``extra``
    (``None`` values left out: the trainer's defaults); ``fixed`` adds keys (e.g. ``seed``)
    before ``extra``."""
    cfg: dict[str, Any] = {
        "benchmark": s.benchmark,
        "epochs": s.epochs,
        "steps": s.steps,
        "size": s.size,
        "device": s.device,
        **fixed,
        "progress": True,  # a line per epoch of each run (a bar on a terminal, one job)
        "tensorboard": False,
    }
    if getattr(s, "scheduler", None) is not None:
        cfg["scheduler"] = s.scheduler
    if s.lr is not None:
        cfg["lr"] = s.lr
    if s.batch_size is not None:
        cfg["batch_size"] = s.batch_size
    for key in ("dataset", "data_root", "dataset_options"):
        if getattr(s, key, None) is not None:
            cfg[key] = getattr(s, key)
    experiment = getattr(s, "experiment", None)
    if experiment is not None:  # as every run's config.yaml records it
        cfg["experiment"] = str(Path(experiment).expanduser().resolve())
    cfg.update(s.extra)
    return cfg


def data_name(config: Mapping[str, Any]) -> str:
    """What a ``TrainConfig`` dict trains on: its experiment's name, its dataset, else its
    benchmark."""
    if config.get("experiment") is not None:
        from taskbalance.data.experiment import parse_experiment_file

        return parse_experiment_file(config["experiment"]).name
    return str(config.get("dataset") or config.get("benchmark") or DEFAULT_BENCHMARK)


def run_compare(settings: CompareSettings, log: Log = print) -> CompareResult:
    """Train every method for every seed plus the single-task baselines, then report.

    Raises ``ValueError`` for user errors (unknown benchmark or method, bad Pareto metric,
    reused runs with other settings).
    """
    from taskbalance.training.distributed_run import in_process_group

    start = time.perf_counter()
    s = settings
    base, info, methods, pareto, options, plan = _planned(s, in_process_group(), log)
    seeds, out = list(s.seeds), Path(s.out_dir)
    rank = _compare_rank(s.jobs)  # under torchrun: every run trains over every rank in turn
    jobs, threads = resolve_jobs(s.jobs, s.device, len(plan)) if rank is None else (1, 1)
    if jobs > 1:
        log(f"training {jobs} runs at a time, {threads} torch thread(s) each")
    results_list = _run_plan(plan, jobs, threads, log)
    if rank:  # rank 0 alone reports
        return CompareResult(out, {}, "", {}, time.perf_counter() - start)
    baseline_runs, method_runs = _by_kind(plan, results_list, info.names, methods)
    timing = None
    if s.timing and rank is None:  # under torchrun, times per step are the runs' own
        timing = _timing_pass(
            base, seeds[0], methods, info.names, threads, log, s.timing_rounds, s.timing_steps,
            options,
        )  # fmt: skip
    board = build_leaderboard(
        method_runs,
        baseline_runs,
        info.higher_is_better,
        timing=None if timing is None else timing["seconds"],
    )
    if options:  # the leaderboard says which options a method ran with
        board["method_options"] = options
    if base.get("final_epochs"):  # the MTAN protocol (a recipe), not the validation rule
        board["final_rule"] = f"as each metric's mean over the last {base['final_epochs']} epochs"
    sharing = _measure_sharing({**base, "method": "ew", "seed": seeds[0], "out_dir": str(out)})
    title = _title(s, len(methods), len(seeds), base)
    markdown = to_markdown(board, title=title, sharing=sharing)
    transfer = negative_transfer(method_runs, baseline_runs, info.higher_is_better)
    markdown += "\n" + "\n".join(transfer_markdown(transfer))
    markdown += _published(s.recipe, board)
    figures = _write_plots(out / "plots", method_runs, board, info, pareto, len(seeds))
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", markdown)
    runs, baselines = _run_summaries(methods, info.names, seeds, method_runs, baseline_runs)
    payload = {
        "benchmark": data_name(base),
        "methods": methods,
        "method_options": options,
        "seeds": seeds,
        "settings": json.loads(json.dumps(base, default=str)),
        "leaderboard": board,
        "sharing": sharing,
        "negative_transfer": [asdict(r) for r in transfer],
        "timing": timing,
        "jobs": jobs,
        "threads_per_job": threads,
        "runs": [r.to_json() for r in runs],
        "baselines": [r.to_json() for r in baselines],
        "plots": {k: str(v) for k, v in figures.items()},
        "seconds": seconds,
        "recipe": s.recipe,
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    return CompareResult(out, board, markdown, figures, seconds, runs, baselines)


def check_compare(settings: CompareSettings, distributed: bool) -> None:
    """What :func:`run_compare` checks before anything trains (data, methods, options, Pareto
    metrics, seeds, every run's method and its sampling, ``distributed`` or not), with no data
    built: ``taskbalance compare --nproc N`` runs it before starting torchrun, so bad input is
    refused once, not by every rank."""
    _planned(settings, distributed, lambda _: None)


def _planned(
    s: CompareSettings, distributed: bool, log: Log
) -> tuple[dict[str, Any], TaskInfo, list[str], Any, dict[str, dict[str, Any]], list[Any]]:
    """``(base, info, methods, pareto, options, plan)`` of ``s``, validated (:func:`_plan`)."""
    base = base_config(s)
    info = task_info(base)
    methods = resolve_methods(s.methods, len(info.names), log, s.method_options)
    pareto = parse_pareto(s.pareto, info)
    seeds = list(s.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    out = Path(s.out_dir)
    total = len(seeds) * (len(info.names) + len(methods))
    log(
        f"compare on {data_name(base)}: {len(methods)} methods x {len(seeds)} seed(s) + "
        f"{len(info.names)} single-task baselines = {total} runs -> {out}"
    )
    options = check_method_options(s.method_options, methods, len(info.names))
    plan = _plan(out, base, seeds, info.names, methods, options, distributed)
    return base, info, methods, pareto, options, plan


def _by_kind(
    plan: Sequence[tuple[str, str, dict[str, Any]]],
    results: Sequence[dict[str, Any]],
    tasks: Sequence[str],
    methods: Sequence[str],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """The results of ``plan``'s runs: ``({task: baselines}, {method: runs})``, seeds in order."""
    baseline_runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    method_runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for (key, _, _), run in zip(plan, results, strict=True):
        kind, _, name = key.partition(":")
        (baseline_runs if kind == "task" else method_runs)[name].append(run)
    return baseline_runs, method_runs


def _published(recipe: str | None, board: dict[str, Any]) -> str:
    """The published-numbers section of a recipe's leaderboard (``""`` without one)."""
    if recipe is None:
        return ""
    from .published import published_section

    section = published_section(recipe, board)
    return f"\n{section}" if section else ""


def _compare_rank(jobs: int | None) -> int | None:
    """This process's rank under torchrun (``None`` in one process), where ``jobs`` must be 1."""
    from taskbalance.training.distributed import rank_and_world
    from taskbalance.training.distributed_run import in_process_group

    if not in_process_group():
        return None
    if jobs not in (None, 1):
        raise ValueError(
            f"jobs={jobs} under torchrun: every run trains over all the processes, one run "
            "after the other; leave --jobs out"
        )
    return rank_and_world()[0]


def method_config(
    base: Mapping[str, Any], method: str, options: Mapping[str, Mapping[str, Any]], **more: Any
) -> dict[str, Any]:
    """The ``TrainConfig`` dict of ``method``'s runs: ``base`` with the method and its options
    (``options[method]``, over any ``method_options`` of ``base``) and ``more``."""
    cfg = {**base, "method": method, **more}
    if options.get(method):
        cfg["method_options"] = {**(base.get("method_options") or {}), **options[method]}
    return cfg


def check_method_options(
    options: Mapping[str, Mapping[str, Any]], methods: Sequence[str], num_tasks: int
) -> dict[str, dict[str, Any]]:
    """``options`` (``{method: {key: value}}``) validated against the compared ``methods``
    (each created with its options now, before anything trains), as plain dicts."""
    import taskbalance

    if not isinstance(options, Mapping):
        raise ValueError(f"method_options must map a method to its options, got {options!r}")
    stray = [m for m in options if m not in methods]
    if stray:
        raise ValueError(
            f"options given for method(s) {', '.join(map(repr, stray))}, which the comparison "
            f"does not train (methods: {', '.join(methods)}); add them to --methods or remove "
            "their --option"
        )
    checked: dict[str, dict[str, Any]] = {}
    for method, given in options.items():
        if not isinstance(given, Mapping):
            raise ValueError(f"options of method {method!r} must be a mapping, got {given!r}")
        try:
            taskbalance.create(method, num_tasks, **given)
        except (TypeError, ValueError) as err:
            text = ", ".join(f"{method}.{k}={v!r}" for k, v in given.items())
            raise ValueError(f"--option {text}: {err}") from None
        checked[method] = dict(given)
    return checked


def _plan(
    out: Path,
    base: dict[str, Any],
    seeds: list[int],
    tasks: list[str],
    methods: list[str],
    options: Mapping[str, Mapping[str, Any]],
    distributed: bool,
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(key, label, config)`` of every run, baselines first; validated before anything
    trains (a method that cannot be created, e.g. static without weights, or that cannot
    sample as asked in these runs, ``distributed`` or not, fails now)."""
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for seed in seeds:
        for task in tasks:
            folder = out / "baselines" / task / f"seed{seed}"
            cfg = {**base, "method": "ew", "tasks": [task], "seed": seed, "out_dir": str(folder)}
            plan.append((f"task:{task}", f"single-task {task} seed{seed}", cfg))
        for method in methods:
            folder = out / "runs" / method / f"seed{seed}"
            cfg = method_config(base, method, options, seed=seed, out_dir=str(folder))
            plan.append((f"method:{method}", f"{method} seed{seed}", cfg))
    _check_runs(plan, len(tasks), distributed)
    return plan


def _check_runs(
    plan: Sequence[tuple[str, str, dict[str, Any]]], num_tasks: int, distributed: bool
) -> None:
    """Create every run's method; refuse, in one error naming every such method, the
    double-sampling methods that these runs cannot train (``distributed``: under torchrun; in
    rep mode; with partial labels), naming compare's fix."""
    import taskbalance
    from taskbalance.balancing.independent_step import single_sampling_error
    from taskbalance.training import TrainConfig
    from taskbalance.training.build import choose_mode
    from taskbalance.training.runner import double_sampling_problem

    refused: dict[str, list[str]] = {}  # problem -> methods
    for _, _, cfg in plan:
        config = TrainConfig.from_dict(cfg)
        tasks = len(config.tasks) if config.tasks is not None else num_tasks
        method = taskbalance.create(config.method, tasks, **config.method_options)
        mode = choose_mode(config.mode, method, None)  # the runner's, before the model
        problem = double_sampling_problem(config, method, mode, distributed)
        if problem is not None and config.method not in refused.get(problem, []):
            refused.setdefault(problem, []).append(config.method)
    for problem, methods in refused.items():
        raise single_sampling_error(methods, problem, command="compare")


def _title(s: CompareSettings, n_methods: int, n_seeds: int, base: Mapping[str, Any]) -> str:
    steps_text = "full epochs" if s.steps is None else f"epochs of {s.steps} steps"
    scheduler = base.get("scheduler", "none")
    return f"{data_name(base)}: {n_methods} methods, {n_seeds} seed(s), {s.epochs} {steps_text}" + (
        f", {scheduler} learning rate" if scheduler != "none" else ""
    )


def _run_summaries(
    methods: list[str],
    tasks: list[str],
    seeds: list[int],
    method_runs: Mapping[str, list[dict[str, Any]]],
    baseline_runs: Mapping[str, list[dict[str, Any]]],
) -> tuple[list[RunSummary], list[RunSummary]]:
    """Every method run and every single-task baseline, typed."""
    runs = [
        RunSummary.from_run(run, method=m, seed=seed)
        for m in methods
        for seed, run in zip(seeds, method_runs[m], strict=True)
    ]
    baselines = [
        RunSummary.from_run(run, method="ew", seed=seed, task=t)
        for t in tasks
        for seed, run in zip(seeds, baseline_runs[t], strict=True)
    ]
    return runs, baselines


def resolve_jobs(jobs: int | None, device: str, runs: int) -> tuple[int, int]:
    """``(jobs, threads per job)``: how many runs train side by side, each in its own process.

    ``None`` on a CPU: one job per torch thread of this process (the command line sets that from
    the CPUs not busy with other work, or ``--threads``), one thread each: the small built-in
    networks use one core each far better than two threads share one network. On an accelerator
    one job. Never more jobs than runs.
    """
    import torch

    threads = torch.get_num_threads()
    if device == "auto":
        from taskbalance.training.devices import auto_device

        device = str(auto_device())
    if jobs is None:
        jobs = threads if str(device).startswith("cpu") else 1
    if not is_int(jobs) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    jobs = max(1, min(jobs, runs))
    return jobs, max(1, threads // jobs)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_job(cfg: dict[str, Any], label: str) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    results = run_or_reuse(cfg, label=label, log=lines.append)
    return results, lines


def _run_plan(
    plan: Sequence[tuple[str, str, dict[str, Any]]], jobs: int, threads: int, log: Log
) -> list[dict[str, Any]]:
    """Train (or reuse) every run of ``plan``; results in plan order. With ``jobs > 1`` the runs
    train in that many worker processes (spawned, ``threads`` torch threads each); each run's
    folder is its own, so an interrupted comparison continues from its checkpoints either way."""
    total = len(plan)
    if jobs == 1:
        return [
            run_or_reuse(cfg, label=f"[{k}/{total}] {label}", log=log)
            for k, (_, label, cfg) in enumerate(plan, start=1)
        ]
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: list[dict[str, Any] | None] = [None] * total
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(_train_job, cfg, label): k for k, (_, label, cfg) in enumerate(plan)}
        pending = set(futures)
        done_count = 0
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run, lines = future.result()  # re-raises a run's error here
                    results[futures[future]] = run
                    done_count += 1
                    for line in lines:
                        log(f"[{done_count}/{total}] {line}")
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [r for r in results if r is not None]


def _timing_pass(
    base: Mapping[str, Any],
    seed: int,
    methods: Sequence[str],
    tasks: Sequence[str],
    threads: int,
    log: Log,
    rounds: int = TIMING_ROUNDS,
    steps: int = TIMING_STEPS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """:func:`~taskbalance.experiments.timing.measure_step_times` of every method and every
    single-task network (``"single-task/<task>"``) with ``threads`` torch threads, the setting
    each run trained with (each method with its ``options``)."""
    import torch

    from .timing import measure_step_times

    configs = {m: method_config(base, m, options or {}, seed=seed) for m in methods}
    for task in tasks:
        configs[f"single-task/{task}"] = {**base, "method": "ew", "tasks": [task], "seed": seed}
    for cfg in configs.values():
        cfg.pop("out_dir", None)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        log(
            f"timing pass: {len(configs)} configurations x {rounds} rounds of {steps} steps, "
            f"interleaved, {threads} thread(s)"
        )
        return measure_step_times(configs, rounds=rounds, steps=steps)
    finally:
        torch.set_num_threads(saved)


def _measure_sharing(
    config: Mapping[str, Any], repeats: int = SHARING_REPEATS, warmup: int = SHARING_WARMUP
) -> dict[str, Any] | None:
    """What sharing saves, measured on the model the runs of ``config`` train.

    Builds the benchmark's model (``model_options`` of ``config``) and its single-task copies,
    counts their parameters and times their forward pass (eval mode, no grad) on the first
    validation batch on ``config``'s device with :func:`taskbalance.models.sharing_report`.
    Returns :func:`~taskbalance.experiments.report.sharing_summary`'s dict plus ``tasks``,
    ``per_task_parameters``, ``per_task_seconds``, ``batch_size``, ``repeats`` and ``device``;
    ``None`` for a model without single-task copies.
    """
    import torch

    from taskbalance.data.loading import batch_loader
    from taskbalance.models.report import sharing_report
    from taskbalance.training import TrainConfig
    from taskbalance.training.devices import resolve_device
    from taskbalance.training.sources import load_data

    cfg = TrainConfig.from_dict(config)
    device = resolve_device(cfg.device)
    bench = load_data(cfg.replace(labels=None, pseudo_labels=None))
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(cfg.seed)
        model = bench.build_model(**cfg.model_options)
    copies = getattr(model, "single_task_copies", None)
    if not callable(copies):
        return None
    singles = {task: net.to(device) for task, net in copies().items()}
    model.to(device)
    split = bench.val if bench.val is not None and len(bench.val) else bench.test
    loader = batch_loader(split, cfg.eval_batch_size or cfg.batch_size)
    inputs = next(iter(loader))[0].to(device)
    measured = sharing_report(model, singles, inputs, repeats=repeats, warmup=warmup)
    return {
        **sharing_summary(
            measured["multitask_parameters"],
            measured["single_task_parameters"],
            measured["multitask_time_s"],
            measured["single_task_time_s"],
        ),
        "tasks": measured["tasks"],
        "per_task_parameters": measured["per_task_parameters"],
        "per_task_seconds": measured["per_task_time_s"],
        "batch_size": int(inputs.shape[0]),
        "repeats": repeats,
        "device": str(device),
    }


def _write_plots(
    folder: Path,
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    board: Mapping[str, Any],
    info: TaskInfo,
    pareto: tuple[tuple[str, str], tuple[str, str]] | None,
    seeds: int,
) -> dict[str, Path]:
    histories = {m: [r.get("history") or [] for r in runs] for m, runs in method_runs.items()}
    figures = {
        "validation_curves": plots.plot_validation_curves(
            histories,
            info.primary,
            folder / "validation_curves.png",
            higher_is_better={t: info.higher_is_better[t][m] for t, m in info.primary.items()},
        ),
        "task_weights": plots.plot_task_weights(histories, info.names, folder / "task_weights.png"),
        "delta_m": plots.plot_delta_bars(
            {r["method"]: (r["delta_m"]["mean"], r["delta_m"]["std"]) for r in board["rows"]},
            folder / "delta_m.png",
            seeds=seeds,
            marks={r["method"]: significance_marks(r) for r in board["rows"]}
            if seeds > 1
            else None,
        ),
    }
    if pareto is not None:
        (ta, ma), (tb, mb) = pareto
        points, errors = {}, {}
        for row in board["rows"]:
            a, b = row["metrics"][ta][ma], row["metrics"][tb][mb]
            points[row["method"]] = (a["mean"], b["mean"])
            errors[row["method"]] = (a["std"], b["std"])
        ref = board["baseline"]["metrics"]
        figures["pareto"] = plots.plot_pareto(
            points,
            (f"{ta} {ma}", f"{tb} {mb}"),
            folder / "pareto.png",
            higher_is_better=(info.higher_is_better[ta][ma], info.higher_is_better[tb][mb]),
            errors=errors if seeds > 1 else None,
            reference=("single-task", (ref[ta][ma], ref[tb][mb])),
        )
    return figures
