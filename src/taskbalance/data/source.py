"""What a training run needs from its data: the :class:`DataSource` protocol, and the container of
a real dataset read from disk (:class:`RealDataSource`, built from a :class:`DatasetSpec`).

The built-in generated :class:`~taskbalance.data.Benchmark` satisfies :class:`DataSource` as it
is; so does anything else with these attributes (a user's own data, for example)::

    name          str                           shown in logs and reports
    tasks         list[Task]                    the tasks, in order
    task_names    list[str]                     their names
    train, val, test                            datasets of (inputs, targets, masks) items
    input_shape   tuple[int, ...]               shape of one input
    build_model(**options) -> MultiTaskModel    a fresh default model
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import Dataset

    from taskbalance.models import MultiTaskModel
    from taskbalance.tasks import Task

__all__ = ["DataSource", "DatasetSpec", "RealDataSource"]

DOCS_PAGE = "docs/datasets.md"


@runtime_checkable
class DataSource(Protocol):
    """The data of a run: tasks, three splits of ``(inputs, targets, masks)`` items, a model."""

    name: str
    task_names: list[str]
    train: Any
    val: Any
    test: Any

    @property
    def tasks(self) -> list[Task]: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def build_model(self, **options: Any) -> MultiTaskModel: ...


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one real dataset from its folder (registered with
    :func:`taskbalance.data.register_dataset`).

    Attributes:
        name: registry name (``--dataset NAME``).
        description: one line.
        task_names: the tasks, in order (known without reading any file).
        folders: split (``"train"``, ``"test"``, optionally ``"val"``) -> folder name under the
            root. Without ``"val"``, validation is held out of the training folder
            (option ``val_fraction``).
        read: ``(root, folder, options) -> Dataset`` of ``(inputs, targets, masks)`` items; raises
            ``FileNotFoundError`` / ``ValueError`` naming a missing or malformed file.
        make_tasks: ``options -> list[Task]`` (imports ``taskbalance.tasks`` lazily).
        make_model: ``(options, model_options) -> MultiTaskModel`` (the default model).
        layout: the expected files, with shapes and dtypes (shown in every layout error).
        options: the dataset's own options with their defaults (e.g. ``num_classes``).
        check_options: ``options -> None`` raising ``ValueError`` naming a bad option value.
        docs: the section of ``docs/datasets.md`` that shows how to obtain and arrange the data.
        train_transform: ``options -> transform or None``: augmentation of the training split
            (applied after the validation hold-out, so validation stays unaugmented).
    """

    name: str
    description: str
    task_names: tuple[str, ...]
    folders: Mapping[str, str]
    read: Callable[[Path, str, dict[str, Any]], Dataset]
    make_tasks: Callable[[dict[str, Any]], list[Task]]
    make_model: Callable[[dict[str, Any], dict[str, Any]], MultiTaskModel]
    layout: str
    options: Mapping[str, Any] = field(default_factory=dict)
    check_options: Callable[[dict[str, Any]], Any] | None = None
    docs: str = DOCS_PAGE
    train_transform: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        missing = [s for s in ("train", "test") if s not in self.folders]
        unknown = sorted(set(self.folders) - {"train", "val", "test"})
        if missing or unknown:
            raise ValueError(
                f"DatasetSpec {self.name!r}: folders must map 'train', 'test' (and optionally "
                f"'val') to folder names, got {dict(self.folders)}"
            )


class RealDataSource:
    """A real dataset read from ``root``: its three splits, tasks and default model.

    Built by :func:`taskbalance.data.load_dataset`; satisfies :class:`DataSource`.

    Attributes:
        name: the registry name.
        root: the dataset folder.
        options: the resolved dataset options.
        train, val, test: the splits (``val`` may be a held-out part of the training folder, or
            the test split itself when ``val_fraction`` is 0 and the dataset has no val folder).
        reads_from_disk: true: samples are read from files one by one, so a run loads them
            with DataLoader workers by default (``num_workers: auto``).
    """

    reads_from_disk = True

    def __init__(
        self,
        spec: DatasetSpec,
        root: Path,
        options: dict[str, Any],
        splits: Mapping[str, Any],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.root = root
        self.options = options
        self.train = splits["train"]
        self.val = splits["val"]
        self.test = splits["test"]
        self.task_names = list(spec.task_names)
        self._tasks: list[Task] | None = None

    @property
    def tasks(self) -> list[Task]:
        """The dataset's :class:`~taskbalance.tasks.Task` objects (built on first access)."""
        if self._tasks is None:
            self._tasks = list(self.spec.make_tasks(self.options))
        return self._tasks

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (read from the first training sample)."""
        return tuple(self.train[0][0].shape)

    def build_model(self, **options: Any) -> MultiTaskModel:
        """A fresh default model; options depend on the dataset (unknown ones raise
        ``ValueError``)."""
        return self.spec.make_model(self.options, dict(options))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in ("train", "val", "test"))
        return f"RealDataSource({self.name!r}, root={str(self.root)!r}, {sizes})"
