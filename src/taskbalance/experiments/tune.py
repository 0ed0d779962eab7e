"""``tune``: an Optuna search of static task weights that minimises validation Δm%.

Search space: one weight per task, log-uniform in ``[low, high]`` (default ``[0.1, 10]``),
normalised to sum to the number of tasks (so ``[1, ..., 1]`` is equal weighting, and the scale of
the loss, which the learning rate already sets, is not searched). The first trial of a new study is
equal weighting, so the study always contains the ``ew`` reference point.

Objective: Δm% on the **validation** split (at the run's best validation epoch) against
single-task baselines (one ``ew`` run per task with ``tasks=[task]``), which are trained once and
cached in ``OUT/baselines/<task>/seed<k>/`` (the same layout as ``compare``, so pointing ``tune``
at a ``compare`` folder with the same settings reuses its baselines). Single-task baselines rather
than the ``ew`` run: Δm% then means the same as in the leaderboard, and "better than equal
weighting" is read off the first trial. The test split is never looked at.

Persistence: the study lives in an Optuna storage (default ``sqlite:///OUT/tune.db``) and is
loaded if it exists, so calling ``tune`` again continues it. ``trials`` is the number of finished
trials the study should have: an interrupted call re-run with the same ``trials`` runs only the
missing ones, a larger ``trials`` extends the study. A trial whose process was killed is retried
with the same weights by the next call (at once when it ran on this host; otherwise once the
storage heartbeat marks it failed, after 30 s of silence), resuming its run from the checkpoint in
``OUT/trials/w-<hash of the weights>/``. The sampler's random draws depend only on the seed and
the trial's position, so an interrupted and continued study samples what an uninterrupted one
would. A trial whose validation Δm% is not finite (its run diverged to NaN metrics) is marked
failed and does not count as finished; a study without a finished trial is an error. The printed
``train`` command writes the best weights exactly (the shortest repr that reads back the same).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskbalance.fileio import atomic_write_text
from taskbalance.validation import is_int

from .compare import (
    DEFAULT_EPOCHS,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    Log,
    base_config,
    data_name,
    run_or_reuse,
    task_info,
)
from .report import delta, merge_task_metrics

__all__ = ["TuneResult", "TuneSettings", "normalise_weights", "run_tune", "train_command"]

# Settings that change what a trial's value means; a study reloaded with other values is refused.
_STUDY_KEYS = ("benchmark", "epochs", "steps", "size", "seed", "lr", "batch_size", "low", "high")


@dataclass
class TuneSettings:
    """Settings of a weight search (the ``taskbalance tune`` flags)."""

    benchmark: str = "multidigits"
    dataset: str | None = None  # a real dataset instead of the benchmark (docs/datasets.md)
    data_root: str | None = None
    dataset_options: dict[str, Any] | None = None
    experiment: str | None = None  # an experiment file instead (docs/experiments.md)
    trials: int = 20
    storage: str | None = None  # default sqlite:///<out_dir>/tune.db
    study: str | None = None  # default "<benchmark or dataset>-static-weights"
    epochs: int = DEFAULT_EPOCHS
    steps: int | None = DEFAULT_STEPS
    size: str = DEFAULT_SIZE
    device: str = "cpu"
    seed: int = 0
    out_dir: str | Path = "runs/tune"
    lr: float | None = None
    batch_size: int | None = None
    low: float = 0.1
    high: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields
    overwrite: bool = False  # delete an existing study of this name and start afresh
    recipe: str | None = None  # the recipe (--recipe) they follow; the train command names it
    # the dataset options the printed train command gives (None: ``dataset_options``); with a
    # recipe only those given on the command line, so the final run follows the recipe's
    # protocol, not the validation split the search held out
    command_dataset_options: dict[str, Any] | None = None


@dataclass
class TuneResult:
    """Outcome of :func:`run_tune`; ``best_weights.json`` is :meth:`to_json`, read back by
    :meth:`load`."""

    study_name: str
    storage: str
    trials: int  # finished trials in the study
    best_value: float  # validation Δm% of the best trial
    best_weights: dict[str, float]  # normalised, per task
    command: str  # the ``taskbalance train`` command that trains with them
    best_trial: int | None = None  # the best trial's number in the study
    not_in_delta_m: dict[str, str] = field(default_factory=dict)  # metric -> why left out

    def to_json(self) -> dict[str, Any]:
        """The content of ``best_weights.json``."""
        return {
            "study": self.study_name,
            "storage": self.storage,
            "trials": self.trials,
            "best_trial": self.best_trial,
            "validation_delta_m": self.best_value,
            "not_in_delta_m": self.not_in_delta_m,
            "weights": self.best_weights,
            "command": self.command,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuneResult:
        """Inverse of :meth:`to_json`."""
        return cls(
            study_name=data["study"],
            storage=data["storage"],
            trials=data["trials"],
            best_value=data["validation_delta_m"],
            best_weights=dict(data["weights"]),
            command=data["command"],
            best_trial=data.get("best_trial"),
            not_in_delta_m=dict(data.get("not_in_delta_m") or {}),
        )

    @classmethod
    def load(cls, out_dir: str | Path) -> TuneResult:
        """The study's outcome in ``out_dir/best_weights.json``."""
        path = Path(out_dir) / "best_weights.json"
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def normalise_weights(raw: Sequence[float]) -> list[float]:
    """Scale positive weights so that they sum to their count (equal weights -> all ones)."""
    values = [float(w) for w in raw]
    if not values or any(not math.isfinite(w) or w <= 0 for w in values):
        raise ValueError(f"weights must be positive and finite, got {values}")
    total = math.fsum(values)
    return [w * len(values) / total for w in values]


def train_command(settings: TuneSettings, weights: Sequence[float]) -> str:
    """The ``taskbalance train`` command line that trains with ``weights`` and these settings."""
    if settings.experiment is not None:
        data = ["--experiment", settings.experiment]
    elif settings.dataset is not None:
        data = ["--dataset", settings.dataset] if settings.recipe is None else []
        data += ["--data-root", str(settings.data_root)]
        options = settings.dataset_options
        if settings.command_dataset_options is not None:
            options = settings.command_dataset_options
        data += [f"--dataset-option={k}={v}" for k, v in (options or {}).items()]
        if settings.recipe is not None:  # the recipe's model, optimizer and schedule
            data = ["--recipe", settings.recipe, *data]
    else:
        data = ["--benchmark", settings.benchmark]
    args = [
        "taskbalance",
        "train",
        *data,
        "--method",
        "static",
        "--option",
        "weights=" + ",".join(_exact(w) for w in weights),
        "--epochs",
        str(settings.epochs),
    ]
    if settings.steps is not None:
        args += ["--steps", str(settings.steps)]
    if settings.size != "default":
        args += ["--size", str(settings.size)]
    if settings.lr is not None:
        args += ["--lr", str(settings.lr)]
    if settings.batch_size is not None:
        args += ["--batch-size", str(settings.batch_size)]
    if settings.seed != 0:
        args += ["--seed", str(settings.seed)]
    if settings.device != "cpu":
        args += ["--device", settings.device]
    return " ".join(shlex.quote(a) for a in args)


def _exact(value: float) -> str:
    """``value`` written so that reading it back as YAML (``--option``) gives the same float:
    the shortest repr, with a decimal point (YAML 1.1 reads ``1e-05`` as a string)."""
    text = repr(float(value))
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def _trial_seeded_tpe(seed: int) -> Any:
    """A TPE sampler whose random draws for a trial depend only on ``seed`` and the trial's
    position among the sampled trials (retries of killed trials not counted): a study that was
    interrupted and continued samples exactly what one uninterrupted call would have."""
    import optuna

    class TrialSeededTPE(optuna.samplers.TPESampler):
        def before_trial(self, study: optuna.Study, trial: Any) -> None:
            position = sum(
                1
                for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and "failed_trial" not in t.system_attrs
            )
            trial_seed = (seed * 1_000_003 + position) % 2**32
            # TPE's own generator and that of its random startup sampler (optuna 3-5)
            self._rng.rng.seed(trial_seed)
            self._random_sampler._rng.rng.seed(trial_seed)
            super().before_trial(study, trial)

    return TrialSeededTPE(seed=seed, n_startup_trials=5)


def _retry_trials_of_dead_processes(study: Any, storage: Any) -> list[int]:
    """Mark RUNNING trials whose process (on this host) no longer exists as failed and enqueue
    their retry with the same weights (which resumes the trial's run from its checkpoint).
    Trials of other hosts are left to the storage heartbeat (failed after 30 s of silence)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    # No limit: the trial did not fail, its process was killed (a trial that raises is not
    # RUNNING any more and is not retried here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=None)
    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if host != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
            continue
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retry(study, storage.get_trial(trial._trial_id))
        retried.append(trial.number)
    return retried


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _study_settings(s: TuneSettings) -> dict[str, Any]:
    settings = {k: getattr(s, k) for k in _STUDY_KEYS}
    if s.dataset is not None:  # only then: studies of earlier versions keep matching
        settings.update(dataset=s.dataset, dataset_options=s.dataset_options)
    if s.experiment is not None:
        settings.update(experiment=s.experiment)
    if s.recipe is not None:
        settings.update(recipe=s.recipe, extra=s.extra)
    return settings


def run_tune(settings: TuneSettings, log: Log = print) -> TuneResult:
    """Run (or continue) the study: as many trials as it lacks finished ones of
    ``settings.trials``. A trial that fails (non-finite Δm%) does not count, so the study may end
    with fewer; the next call runs the missing ones."""
    from optuna.trial import TrialState

    s = settings
    _check_settings(s)
    base = base_config(s, seed=s.seed)
    info = task_info(base)
    name = data_name(base)
    if len(info.names) < 2:
        raise ValueError(f"{name!r} has one task; there are no weights to tune")
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage_url = s.storage or f"sqlite:///{out.resolve() / 'tune.db'}"
    study_name = s.study or f"{name}-static-weights"
    # The storage is opened (and a bad URL refused) before anything trains.
    storage, existing = _open_storage(storage_url, study_name, s.overwrite)
    baseline, left_out = _baselines(s, info.names, info.higher_is_better, base, out, log)
    study, done = _study(s, info.names, storage, storage_url, study_name, existing, log)
    objective = _objective(s, info, base, baseline, out, log)
    remaining = s.trials - done
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=())
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:  # optuna's study.best_trial would say "Record does not exist."
        raise ValueError(
            f"none of the {len(study.trials)} trial(s) of study {study_name!r} gave a finite "
            "validation Δm% (their runs diverged to NaN metrics, or no metric enters Δm%); see "
            f"their runs in {out / 'trials'}, then try a lower --lr or more --trials"
        )
    best = study.best_trial
    if best.value is None:  # pragma: no cover - a COMPLETE trial always has a value
        raise RuntimeError(f"best trial {best.number} has no value")
    best_weights = best.user_attrs.get("weights") or normalise_weights(
        [best.params[f"w_{t}"] for t in info.names]
    )
    result = TuneResult(
        study_name=study_name,
        storage=storage_url,
        trials=len(finished),
        best_value=float(best.value),
        best_weights=dict(zip(info.names, best_weights, strict=True)),
        command=train_command(s, best_weights),
        best_trial=best.number,
        not_in_delta_m=dict(left_out),
    )
    atomic_write_text(out / "best_weights.json", json.dumps(result.to_json(), indent=2))
    return result


def _check_settings(s: TuneSettings) -> None:
    if not is_int(s.trials) or s.trials < 1:
        raise ValueError(f"--trials must be an integer >= 1, got {s.trials!r}")
    if not (0 < s.low < s.high and math.isfinite(s.high)):
        raise ValueError(f"weight range must satisfy 0 < low < high, got [{s.low}, {s.high}]")


def _open_storage(storage_url: str, study_name: str, overwrite: bool) -> tuple[Any, list[str]]:
    """The Optuna storage and the studies it holds (``study_name`` deleted on overwrite)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                storage_url,
                heartbeat_interval=10,
                grace_period=30,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        existing = optuna.study.get_all_study_names(storage)
    except Exception as err:  # bad URL, unreachable database: a user error with one line
        text = " ".join(str(err).split())
        raise ValueError(
            f"--storage: cannot open Optuna storage {storage_url!r} ({text}); give a database "
            "URL such as sqlite:///tune.db"
        ) from None
    if overwrite and study_name in existing:
        optuna.delete_study(study_name=study_name, storage=storage)
        existing = [n for n in existing if n != study_name]
    return storage, existing


def _baselines(
    s: TuneSettings,
    names: list[str],
    higher_is_better: Any,
    base: dict[str, Any],
    out: Path,
    log: Log,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Single-task baselines (trained once, reused by every trial and every later call) and
    the metrics Δm leaves out against them."""
    from taskbalance.tasks import DELTA_RULE, excluded_metrics, flatten_results

    per_task = {}
    for task in names:
        cfg = {
            **base,
            "method": "ew",
            "tasks": [task],
            "out_dir": str(out / "baselines" / task / f"seed{s.seed}"),
        }
        per_task[task] = run_or_reuse(cfg, label=f"single-task {task}", log=log)["val"]
    baseline = merge_task_metrics(per_task)
    left_out = excluded_metrics(flatten_results(baseline), flatten_results(higher_is_better))
    if left_out:
        shown = "; ".join(f"{m} ({why})" for m, why in left_out.items())
        log(f"not in Δm (rule: {DELTA_RULE}): {shown}")
    return baseline, left_out


def _study(
    s: TuneSettings,
    names: list[str],
    storage: Any,
    storage_url: str,
    study_name: str,
    existing: list[str],
    log: Log,
) -> tuple[Any, int]:
    """The study (continued when it exists with the same settings) and its finished trials."""
    import optuna
    from optuna.trial import TrialState

    done = 0
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        stored = study.user_attrs.get("settings")
        if stored is not None and stored != _study_settings(s):
            diff = [
                f"{k}: {stored.get(k)!r} there, {v!r} now"
                for k, v in _study_settings(s).items()
                if stored.get(k) != v
            ]
            raise ValueError(
                f"study {study_name!r} in {storage_url} was run with other settings "
                f"({'; '.join(diff)}); use another --study name or replace it with --overwrite"
            )
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        sampler=_trial_seeded_tpe(s.seed),
        load_if_exists=True,
    )
    if "settings" not in study.user_attrs:
        study.set_user_attr("settings", _study_settings(s))
        study.set_user_attr("tasks", names)
    if not study.trials:
        study.enqueue_trial({f"w_{t}": 1.0 for t in names})  # equal weighting first
    retried = _retry_trials_of_dead_processes(study, storage)
    if retried:
        log(f"retrying trial(s) {retried}, whose process was killed")
    log(
        f"study {study_name!r} in {storage_url}: {done} finished trial(s), "
        f"running {max(0, s.trials - done)} more"
    )
    return study, done


def _objective(
    s: TuneSettings, info: Any, base: dict[str, Any], baseline: Any, out: Path, log: Log
) -> Callable[[Any], float]:
    """A trial: sample weights, train (or reuse) their run, validation Δm%."""

    def objective(trial: Any) -> float:
        # who runs the trial: a later call retries it at once if this process dies
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        raw = [trial.suggest_float(f"w_{t}", s.low, s.high, log=True) for t in info.names]
        weights = normalise_weights(raw)
        # Named by the weights, so a retried trial (same weights) resumes its run.
        key = hashlib.sha1(json.dumps([round(w, 10) for w in raw]).encode()).hexdigest()[:10]
        folder = out / "trials" / f"w-{key}"
        cfg = {
            **base,
            "method": "static",
            "method_options": {"weights": weights},
            "out_dir": str(folder),
        }
        result = run_or_reuse(cfg, label=f"trial {trial.number}", log=log)
        value = delta(result["val"], baseline, info.higher_is_better)
        trial.set_user_attr("weights", weights)
        trial.set_user_attr("out_dir", str(folder))
        shown = ", ".join(f"{t}={w:.3f}" for t, w in zip(info.names, weights, strict=True))
        if not math.isfinite(value):  # optuna marks the trial failed; the study goes on
            log(f"trial {trial.number}: weights {shown} -> validation Δm% not finite (NaN "
                "metrics: the run diverged); the trial fails")  # fmt: skip
            return math.nan
        log(f"trial {trial.number}: weights {shown} -> validation Δm% {value:+.2f}")
        return value

    return objective
