"""Your own experiment: a YAML file naming a model factory, a data factory and the tasks
(``docs/experiments.md``), read into a data source the training and comparison commands use.

>>> source = load_experiment("examples/own_experiment/experiment.yaml")  # doctest: +SKIP
>>> model = source.build_model()  # doctest: +SKIP
"""

from .schema import ExperimentError, ExperimentFile, parse_experiment_file
from .source import ExperimentSource, experiment_model, experiment_tasks, load_experiment
from .tasks import preset_kinds

__all__ = [
    "ExperimentError",
    "ExperimentFile",
    "ExperimentSource",
    "experiment_model",
    "experiment_tasks",
    "load_experiment",
    "parse_experiment_file",
    "preset_kinds",
]
