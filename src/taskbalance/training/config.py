"""``TrainConfig``: every setting of one training run, validated on construction.

A bad value raises ``ValueError`` naming the key and what is allowed; unknown keys in
:meth:`TrainConfig.from_dict` / :meth:`TrainConfig.from_yaml` raise ``ValueError`` naming them,
suggesting the closest valid key and listing all valid keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from taskbalance.validation import did_you_mean, is_int, is_real

__all__ = [
    "AMP_DTYPES",
    "OPTIMIZERS",
    "RESUME_MAY_DIFFER",
    "SCHEDULERS",
    "TrainConfig",
    "read_config_file",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")
MODES = ("param", "rep")
AMP_DTYPES = ("bfloat16", "float16")
SIZES = ("default", "tiny")
DEFAULT_BENCHMARK = "multidigits"

#: Keys that may change between a run and its resumption (everything else must match).
#: ``data_root`` may: the runner names a real dataset's files by their fingerprint instead
#: (:func:`~taskbalance.data.registry.dataset_fingerprint`), so moved data still resumes.
RESUME_MAY_DIFFER = frozenset(
    {
        "epochs", "resume", "progress", "out_dir", "tensorboard", "num_workers", "device",
        "cache_dir", "final_epochs", "data_root", "affinity", "nonfinite",
    }
)


def unrecorded_files_note(there: Any, now: Any) -> str | None:
    """Why the ``inputs`` of a run in a folder (``there``) differ from this run's (``now``),
    when the only difference is that it was made before a real dataset's files were recorded
    (``dataset_files``, :func:`~taskbalance.data.registry.dataset_fingerprint`); else ``None``."""
    if not isinstance(now, Mapping) or "dataset_files" not in now:
        return None
    if there is not None and (not isinstance(there, Mapping) or "dataset_files" in there):
        return None
    rest = {k: v for k, v in now.items() if k != "dataset_files"}
    if rest != dict(there or {}):
        return None
    return (
        "inputs: that run was made before taskbalance recorded a dataset's files (its config "
        "has no inputs.dataset_files), so it cannot be checked to hold the same data"
    )


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """Settings of one run of :func:`taskbalance.training.train`.

    Attributes:
        benchmark: a name from ``taskbalance.data.available_benchmarks()``; ``None`` only for a
            run whose data an experiment hands the runner (:class:`~.runner.RunInputs`).
        method: a name from ``taskbalance.available_methods()``.
        method_options: keyword options of ``taskbalance.create(method, T, **method_options)``.
        mode: ``"param"`` or ``"rep"``; ``None`` (or ``"auto"``) picks ``"rep"`` when the method
            prefers it (``method.prefers_rep_mode``) and the model supports it, else ``"param"``.
        tasks: subset of the benchmark's task names to train and evaluate (one name: a
            single-task baseline); ``None`` = all tasks.
        trainable_tasks: the tasks whose losses are trained and balanced (the method is
            created for that many tasks); the others are only evaluated. ``None`` = all of
            ``tasks``. Model selection uses the trainable tasks.
        freeze: parts of the model frozen during the run (``"backbone"`` or task names, see
            ``MultiTaskNetwork.freeze``: parameters and BatchNorm statistics stay fixed) and
            unfrozen after it; ``None`` = nothing. Staged training is a chain of such runs.
        epochs: number of epochs (>= 1).
        steps: cap on the training steps of each epoch (smoke tests); ``None`` = whole epoch.
        batch_size: training batch size; ``eval_batch_size`` (default: ``batch_size``) for
            validation and test.
        lr, weight_decay: optimizer learning rate (> 0) and weight decay (>= 0).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; ``optimizer_options`` are extra keyword
            arguments of the torch optimizer (e.g. ``{"momentum": 0.9}`` for SGD).
        scheduler: ``"none"``, ``"cosine"`` (cosine annealing over ``epochs``) or ``"step"``
            (``StepLR``, default ``step_size=max(1, epochs // 3)``, ``gamma=0.1``); stepped once
            per epoch; ``scheduler_options`` override the torch scheduler's keyword arguments.
        grad_clip: clip the global gradient norm to this value (``None`` = no clipping).
        seed: seeds torch, numpy, ``random`` and the data order; ``data_seed`` (default: ``seed``)
            seeds the benchmark's generation.
        device: ``"auto"`` (CUDA if available, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or ``"mps"``.
        amp: mixed precision (CUDA only): ``torch.autocast`` with ``amp_dtype``; ``"float16"``
            adds a ``GradScaler``. ``amp=True`` with another device is an error.
        size: benchmark size, ``"default"``, ``"tiny"`` or a dict of overrides.
        labels: ``{task: fraction}`` of training samples that keep their label.
        pseudo_labels: path of a ``pseudo_labels.pt`` written by ``taskbalance annotate``; its
            kept pseudo-labels fill training samples that lack a real label.
        model_options: keyword options of ``benchmark.build_model(**model_options)``.
        cache_dir: where generated benchmarks are cached (default: the data package's default).
        dataset: a real dataset read from disk instead of a built-in benchmark: a name from
            ``taskbalance.data.available_datasets()`` (``nyuv2``, ``cityscapes``, ...); needs
            ``data_root``. ``benchmark``, ``size``, ``labels`` and ``pseudo_labels`` then stay at
            their defaults. See ``docs/datasets.md``.
        data_root: the dataset's folder (with ``dataset``).
        dataset_options: the dataset's options (e.g. ``{"num_classes": 19}`` for cityscapes,
            ``{"val_fraction": 0}``); ``None`` = its defaults.
        experiment: path of an experiment file (``docs/experiments.md``): the user's model
            factory, data factory and tasks instead of a built-in benchmark. ``benchmark``,
            ``size``, ``data_seed``, ``cache_dir``, ``labels``, ``pseudo_labels`` and the dataset
            keys then stay at their defaults. Stored as an absolute path; the file (and what its
            factories return) must not change between a run and its resumption.
        num_workers: DataLoader workers (0 = load in the main process). ``"auto"``: 0 for the
            built-in benchmarks and experiments, a few for real datasets read from disk (see
            :func:`~taskbalance.training.loaders.resolve_workers`);
            ``$TASKBALANCE_NUM_WORKERS`` overrides ``"auto"``. Shuffling happens in the main
            process, so the batches are the same either way.
        out_dir: directory of the run's files; ``None``: nothing is written (in memory).
        resume: continue from ``out_dir/checkpoint.pt``.
        progress: tqdm progress bars (only shown when stderr is a terminal).
        tensorboard: also log to TensorBoard when the ``tensorboard`` package is importable.
        save_best: keep the weights of the best validation epoch in ``out_dir/best.pt``.
        final_epochs: report val and test metrics as their mean over the last K epochs (the
            MTAN protocol; the recipes set it) instead of those of the best validation epoch
            (``None``).
        affinity: also log the per-epoch first-order TAG task affinity (Fifty et al. 2021) to
            the history and TensorBoard (gradient methods; see ``docs/diagnostics.md``).
        nonfinite: a step whose task gradient holds NaN or Inf: ``"raise"`` (default) stops the
            run with an error naming the task; ``"skip"`` warns, makes no update that step and
            counts it in the history's ``nonfinite_steps`` (``Balancer(nonfinite=...)``). May
            change on resume (e.g. to finish a run that stopped on such a step).
    """

    benchmark: str | None = DEFAULT_BENCHMARK
    method: str = "ew"
    method_options: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    tasks: list[str] | None = None
    trainable_tasks: list[str] | None = None
    freeze: list[str] | None = None
    epochs: int = 5
    steps: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "none"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    grad_clip: float | None = None
    seed: int = 0
    data_seed: int | None = None
    device: str = "cpu"
    amp: bool = False
    amp_dtype: str = "bfloat16"
    size: str | dict[str, Any] = "default"
    labels: dict[str, float] | None = None
    pseudo_labels: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    dataset_options: dict[str, Any] | None = None
    experiment: str | None = None
    num_workers: int | str = "auto"
    out_dir: str | None = "runs/run"
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    save_best: bool = True
    final_epochs: int | None = None
    affinity: bool = False
    nonfinite: str = "raise"

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self._check_strings()
        self._check_numbers()
        self._check_mappings()
        self._check_flags()
        self._check_registry_names()

    @staticmethod
    def _bad(key: str, allowed: str, value: Any) -> ValueError:
        return ValueError(f"config key {key!r} must be {allowed}, got {value!r}")

    def _check_strings(self) -> None:
        if self.benchmark is not None and (
            not isinstance(self.benchmark, str) or not self.benchmark
        ):
            raise self._bad("benchmark", "a benchmark name", self.benchmark)
        if not isinstance(self.method, str) or not self.method:
            raise self._bad("method", "a non-empty string", self.method)
        if self.mode == "auto":
            self.mode = None
        if self.mode is not None and self.mode not in MODES:
            raise self._bad("mode", "one of 'param', 'rep', 'auto' or None", self.mode)
        if self.optimizer not in OPTIMIZERS:
            raise self._bad(
                "optimizer", f"one of {', '.join(map(repr, OPTIMIZERS))}", self.optimizer
            )
        if self.scheduler not in SCHEDULERS:
            raise self._bad(
                "scheduler", f"one of {', '.join(map(repr, SCHEDULERS))}", self.scheduler
            )
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise self._bad("device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", self.device)
        if self.nonfinite not in ("raise", "skip"):
            raise self._bad("nonfinite", "'raise' or 'skip'", self.nonfinite)
        if self.amp_dtype not in AMP_DTYPES:
            raise self._bad(
                "amp_dtype", f"one of {', '.join(map(repr, AMP_DTYPES))}", self.amp_dtype
            )
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)
        if self.out_dir is not None and (not isinstance(self.out_dir, str) or not self.out_dir):
            raise self._bad("out_dir", "a non-empty path or None", self.out_dir)
        for key in ("cache_dir", "data_root"):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, key, value)
            if value is not None and (not isinstance(value, str) or not value):
                raise self._bad(key, "a non-empty path or None", value)
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise self._bad("dataset", "None or a dataset name", self.dataset)
        self.tasks = _name_list("tasks", self.tasks, "task names")
        self.trainable_tasks = _name_list("trainable_tasks", self.trainable_tasks, "task names")
        self.freeze = _name_list("freeze", self.freeze, "parts ('backbone' or task names)")
        if self.trainable_tasks is not None and self.tasks is not None:
            unknown = [t for t in self.trainable_tasks if t not in self.tasks]
            if unknown:
                raise ValueError(
                    f"config key 'trainable_tasks' names task(s) {unknown} that are not in "
                    f"'tasks' {self.tasks}"
                )
        if isinstance(self.size, str):
            if self.size not in SIZES:
                raise self._bad("size", "'default', 'tiny' or a dict of size options", self.size)
        elif isinstance(self.size, Mapping):
            self.size = dict(self.size)
        else:
            raise self._bad("size", "'default', 'tiny' or a dict of size options", self.size)

    def _check_numbers(self) -> None:
        positive_ints = ("epochs", "batch_size")
        for key in positive_ints:
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise self._bad(key, "an integer >= 1", value)
        for key in ("steps", "eval_batch_size", "final_epochs"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value < 1):
                raise self._bad(key, "None or an integer >= 1", value)
        if not is_int(self.seed) or self.seed < 0:
            raise self._bad("seed", "an integer >= 0", self.seed)
        workers = self.num_workers
        if workers != "auto" and (not is_int(workers) or workers < 0):
            raise self._bad("num_workers", "'auto' or an integer >= 0", workers)
        if self.data_seed is not None and (not is_int(self.data_seed) or self.data_seed < 0):
            raise self._bad("data_seed", "None or an integer >= 0", self.data_seed)
        if not is_real(self.lr) or self.lr <= 0:
            raise self._bad("lr", "a finite number > 0", self.lr)
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise self._bad("weight_decay", "a finite number >= 0", self.weight_decay)
        if self.grad_clip is not None and (not is_real(self.grad_clip) or self.grad_clip <= 0):
            raise self._bad("grad_clip", "None or a finite number > 0", self.grad_clip)
        self.lr = float(self.lr)
        self.weight_decay = float(self.weight_decay)
        if self.grad_clip is not None:
            self.grad_clip = float(self.grad_clip)

    def _check_mappings(self) -> None:
        for key in ("method_options", "optimizer_options", "scheduler_options", "model_options"):
            value = getattr(self, key)
            if value is None:
                value = {}
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise self._bad(key, "a mapping of option names to values", value)
            setattr(self, key, dict(value))
        options = self.dataset_options
        if options is not None:
            if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
                raise self._bad("dataset_options", "None or a mapping of option names", options)
            self.dataset_options = dict(options) or None  # {} and None mean the same
        if self.pseudo_labels is not None:
            if not isinstance(self.pseudo_labels, str) or not self.pseudo_labels:
                raise self._bad(
                    "pseudo_labels", "None or the path of a pseudo_labels.pt", self.pseudo_labels
                )
        if self.labels is not None:
            if not isinstance(self.labels, Mapping) or not self.labels:
                raise self._bad(
                    "labels", "None or a non-empty mapping {task: fraction}", self.labels
                )
            for task, fraction in self.labels.items():
                if not isinstance(task, str) or not is_real(fraction) or not 0 < fraction <= 1:
                    raise ValueError(
                        f"config key 'labels' must map task names to fractions in (0, 1], got "
                        f"{task!r}: {fraction!r}"
                    )
            self.labels = {k: float(v) for k, v in self.labels.items()}
            if self.tasks is not None:
                unknown = [t for t in self.labels if t not in self.tasks]
                if unknown:
                    raise ValueError(
                        f"config key 'labels' names task(s) {unknown} that are not in "
                        f"'tasks' {self.tasks}"
                    )

    def _check_flags(self) -> None:
        for key in ("amp", "resume", "progress", "tensorboard", "save_best", "affinity"):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise self._bad(key, "true or false", value)
        if self.amp and not self.device.startswith(("cuda", "auto")):
            raise ValueError(
                f"config key 'amp' is true but device is {self.device!r}: mixed precision is only "
                "supported on CUDA; set amp: false or device: cuda"
            )

    def _check_registry_names(self) -> None:
        from taskbalance.balancing.registry import available_methods, method_info

        methods = available_methods()
        if self.method not in methods:
            raise ValueError(
                f"config key 'method' must be one of {', '.join(methods)}; got {self.method!r}"
                + _suggest(self.method, methods)
            )
        valid_options = method_info(self.method).options
        unknown = sorted(set(self.method_options) - set(valid_options))
        if unknown:
            raise ValueError(
                f"config key 'method_options' has unknown option(s) {unknown} for method "
                f"{self.method!r}; valid options: {', '.join(valid_options) or 'none'}"
            )
        if self.experiment is not None:
            names: list[str] | None = self._check_experiment()
            what = "experiment"
        else:
            names = self._check_dataset() if self.dataset is not None else self._check_benchmark()
            what = "dataset" if self.dataset is not None else "benchmark"
        if names is not None:
            for key, given in (
                ("tasks", self.tasks),
                ("trainable_tasks", self.trainable_tasks),
                ("labels", self.labels),
            ):
                unknown = [t for t in (given or []) if t not in names]
                if unknown:
                    raise ValueError(
                        f"config key {key!r} names unknown task(s) {unknown} of {what} "
                        f"{self.data_name!r}; its tasks are {names}"
                    )

    @property
    def data_name(self) -> str | None:
        """The name of the run's data: the experiment's name, the dataset if given, else the
        benchmark (``None``: the data is handed over to the runner)."""
        if self.experiment is not None:
            return self._experiment_name
        return self.dataset if self.dataset is not None else self.benchmark

    def _check_experiment(self) -> list[str]:
        """An experiment file: readable, its task names (nothing of the user's imported yet);
        the keys of the other data sources stay at their defaults."""
        if isinstance(self.experiment, os.PathLike):
            self.experiment = os.fspath(self.experiment)
        if not isinstance(self.experiment, str) or not self.experiment:
            raise self._bad("experiment", "None or the path of an experiment file", self.experiment)
        self.experiment = str(Path(self.experiment).expanduser().resolve())
        fixes = {
            "benchmark": "remove it: the experiment's data factory gives the data",
            "size": "set the data's size with the file's data_options",
            "data_seed": "give the data's seed in the file's data_options",
            "cache_dir": "the data factory decides where its data lives",
            "labels": "mark missing labels with the masks of the experiment's datasets",
            "pseudo_labels": "mark missing labels with the masks of the experiment's datasets",
            "dataset": "a run trains on one: remove one of them",
            "data_root": "it applies to a real dataset: remove it",
            "dataset_options": "it applies to a real dataset: remove it",
        }
        allowed = {"benchmark": (DEFAULT_BENCHMARK, None), "size": ("default",)}
        for key, fix in fixes.items():
            if getattr(self, key) not in allowed.get(key, (None,)):
                raise ValueError(
                    f"config key {key!r} ({getattr(self, key)!r}) does not apply to the "
                    f"experiment file {self.experiment!r}: {fix}"
                )
        from taskbalance.data.experiment import parse_experiment_file

        parsed = parse_experiment_file(self.experiment)
        self._experiment_name = parsed.name
        return parsed.task_names

    def _check_benchmark(self) -> list[str] | None:
        if self.benchmark is None:
            return None
        from taskbalance.data import available_benchmarks

        benchmarks = available_benchmarks()
        if self.benchmark not in benchmarks:
            raise ValueError(
                f"config key 'benchmark' must be one of {', '.join(benchmarks)}; got "
                f"{self.benchmark!r}" + _suggest(self.benchmark, benchmarks)
            )
        if self.data_root is not None or self.dataset_options is not None:
            key = "data_root" if self.data_root is not None else "dataset_options"
            raise ValueError(
                f"config key {key!r} applies to a real dataset: give 'dataset' too "
                "(see docs/datasets.md), or remove it"
            )
        return _benchmark_task_names(self.benchmark)

    def _check_dataset(self) -> list[str]:
        """A real dataset: the benchmark-only keys stay at their defaults, ``data_root`` given,
        the name and options valid (the folder itself is read when the run starts)."""
        from taskbalance.data.registry import available_datasets, dataset_options, get_dataset_spec

        assert self.dataset is not None
        if self.benchmark not in (DEFAULT_BENCHMARK, None):
            raise ValueError(
                f"config keys 'benchmark' ({self.benchmark!r}) and 'dataset' ({self.dataset!r}) "
                "are both given; a run trains on one: remove one of them"
            )
        for key, default in (("size", "default"), ("labels", None), ("pseudo_labels", None)):
            if getattr(self, key) != default:
                raise ValueError(
                    f"config key {key!r} applies to the built-in benchmarks, not to dataset "
                    f"{self.dataset!r}; remove it"
                )
        datasets = available_datasets()
        if self.dataset not in datasets:
            raise ValueError(
                f"config key 'dataset' must be one of {', '.join(datasets)}; got "
                f"{self.dataset!r}" + _suggest(self.dataset, datasets)
            )
        if self.data_root is None:
            raise ValueError(
                f"config key 'dataset' is {self.dataset!r} but 'data_root' is not given: set it "
                f"to the dataset's folder (--data-root DIR; layouts in docs/datasets.md)"
            )
        spec = get_dataset_spec(self.dataset)
        try:
            dataset_options(spec, self.dataset_options)
        except ValueError as err:
            raise ValueError(f"config key 'dataset_options': {err}") from None
        return list(spec.task_names)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def keys(cls) -> list[str]:
        """Names of every config key, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a training config must be a mapping of keys to values, got {type(data).__name__}"
            )
        valid = cls.keys()
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = "".join(_suggest(str(k), valid, prefix=f"; for {k!r}") for k in unknown)
            raise ValueError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}{hints}; valid keys: "
                f"{', '.join(valid)}"
            )
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a config from a YAML file (a mapping of config keys)."""
        data = read_config_file(path)
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON/YAML-serialisable) dict of every key."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the config as YAML (readable by :meth:`from_yaml`)."""
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some keys changed (unknown keys raise ``ValueError``)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def differences(self, other: Mapping[str, Any], ignore=RESUME_MAY_DIFFER) -> dict[str, tuple]:
        """Keys whose values differ from ``other`` (a config dict): ``{key: (self, other)}``."""
        mine = self.to_dict()
        keys = [k for k in dict.fromkeys([*mine, *other]) if k not in ignore]
        return {k: (mine.get(k), other.get(k)) for k in keys if mine.get(k) != other.get(k)}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping of config keys in the YAML file ``path`` (not yet validated; an empty file
    gives ``{}``).

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ValueError: the file is not valid YAML or does not hold a mapping.
    """
    import yaml

    from taskbalance.data.yaml_text import load_yaml

    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"config file {str(path)!r} {what}")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(
            f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}"
        ) from err
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of config keys, got "
            f"{type(data).__name__}"
        )
    return dict(data)


def _name_list(key: str, value: Any, what: str) -> list[str] | None:
    """``None`` or a non-empty list of distinct non-empty names (one name becomes a list)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    if not ok or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"config key {key!r} must be None or a non-empty list of {what}, "
                         f"got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"config key {key!r} must list distinct {what}, got {value!r}")
    return list(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return value


def _suggest(word: str, choices: list[str], prefix: str = "") -> str:
    hint = did_you_mean(word, choices)
    return f"{prefix}{hint}" if hint else ""


def _benchmark_task_names(name: str) -> list[str] | None:
    """Task names of a registered benchmark without generating it (``None`` if unknown)."""
    try:
        from taskbalance.data.benchmark import get_spec
    except ImportError:  # pragma: no cover - data package layout changed
        return None
    return list(get_spec(name).task_names)
