"""``tune`` after a kill: trials of dead processes are retried at once, with the same weights,
however often they were killed; the sampler's draws depend on the trial's position only."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from taskbalance.experiments.tune import _retry_trials_of_dead_processes, _trial_seeded_tpe


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running(params: dict[str, float], pid: int, **system_attrs) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.RUNNING,
        params=params,
        distributions={k: FloatDistribution(0.1, 10.0, log=True) for k in params},
        user_attrs={"pid": pid, "host": socket.gethostname()},
        system_attrs=system_attrs,
    )


def test_trial_of_a_killed_process_is_retried_however_often_it_was_killed(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    dead = _dead_pid()
    # killed twice already: retry_history holds the two earlier attempts
    study.add_trial(_running({"w": 2.0}, dead, failed_trial=0, retry_history=[0, 1]))
    study.add_trial(_running({"w": 3.0}, 1))  # pid 1 (init) is alive: left alone
    assert _retry_trials_of_dead_processes(study, storage) == [0]
    states = [(t.state, t.params) for t in study.get_trials(deepcopy=False)]
    assert states == [
        (TrialState.FAIL, {"w": 2.0}),
        (TrialState.RUNNING, {"w": 3.0}),
        (TrialState.WAITING, {"w": 2.0}),  # the retry, run first by the next optimize()
    ]


def test_draws_depend_on_the_trial_position_not_on_interruptions(tmp_path):
    def draws(study: optuna.Study, n: int) -> list[float]:
        study.optimize(lambda t: t.suggest_float("w", 0.1, 10.0, log=True), n_trials=n)
        done = study.get_trials(states=[TrialState.COMPLETE])
        return [t.params["w"] for t in done]

    whole = draws(optuna.create_study(sampler=_trial_seeded_tpe(7)), 4)
    parts = optuna.create_study(sampler=_trial_seeded_tpe(7))
    draws(parts, 2)
    resumed = optuna.create_study(sampler=_trial_seeded_tpe(7), storage=None)
    for t in parts.get_trials():
        resumed.add_trial(t)
    assert draws(resumed, 2) == whole
    assert whole != draws(optuna.create_study(sampler=_trial_seeded_tpe(8)), 4)
