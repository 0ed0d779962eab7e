"""Multi-task networks with hard parameter sharing.

:class:`MultiTaskNetwork` is the interface every multi-task architecture of taskbalance implements
(hard sharing, cross-stitch, MTAN): ``forward(x) -> dict[str, Tensor]``, a partition of the
trainable parameters into *shared* and *task-specific* ones, ``features`` for the balancer's
``"rep"`` mode, and ``freeze`` / ``unfreeze`` of parts for staged training.

:class:`MultiTaskModel` is hard parameter sharing (Caruana, "Multitask Learning", Machine Learning
1997): one shared backbone, one head per task. :meth:`MultiTaskModel.from_layers` chooses the
*branch point*: how many layers of a layer stack are shared; the rest is copied per task.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from taskbalance.validation import is_int

__all__ = ["MultiTaskNetwork", "MultiTaskModel", "reset_parameters"]

#: Part names that address the shared part in :meth:`MultiTaskNetwork.freeze`; no task may use them.
SHARED_PART_NAMES = ("backbone", "shared")


def reset_parameters(module: nn.Module) -> nn.Module:
    """Re-initialise every submodule of ``module`` that has ``reset_parameters`` (in place).

    Used to give per-task copies of a layer their own random initialisation.
    """
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


def _validate_task_names(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if "." in name:
            raise ValueError(f"task name {name!r} must not contain '.' (used in module paths)")
        if name in SHARED_PART_NAMES:
            raise ValueError(
                f"task name {name!r} is reserved for the shared part; choose another name"
            )
        if name in out:
            raise ValueError(f"task {name!r} is given twice")
        out.append(name)
    if not out:
        raise ValueError("a multi-task model needs at least one task")
    return tuple(out)


def _match_heads(
    heads: Mapping[str, nn.Module], task_names: Sequence[str] | None
) -> tuple[tuple[str, ...], dict[str, nn.Module]]:
    """Check ``heads`` against ``task_names``: same tasks, modules only. Returns ordered names."""
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must be a mapping task name -> nn.Module, got {type(heads)!r}")
    if task_names is None:
        names = _validate_task_names(heads.keys())
    else:
        names = _validate_task_names(task_names)
        missing = [t for t in names if t not in heads]
        if missing:
            raise ValueError(
                f"no head for task {missing[0]!r} (missing: {missing}); heads given for "
                f"{sorted(heads)}"
            )
        extra = [t for t in heads if t not in names]
        if extra:
            raise ValueError(
                f"head for unknown task {extra[0]!r} (extra: {extra}); tasks are {list(names)}"
            )
    for name in names:
        if not isinstance(heads[name], nn.Module):
            raise TypeError(
                f"head of task {name!r} must be an nn.Module, got {type(heads[name])!r}"
            )
    return names, {t: heads[t] for t in names}


class MultiTaskNetwork(nn.Module):
    """Base class of the multi-task architectures: the shared/task parameter split and freezing.

    Subclasses set ``self.task_names`` and implement :meth:`shared_modules`,
    :meth:`task_modules` and ``forward(x) -> dict[str, Tensor]`` (one prediction per task, in the
    order of ``task_names``), then call :meth:`_check_partition` at the end of ``__init__``.

    **Parameter split.** Every parameter of the network belongs to exactly one part: the shared
    part (:meth:`shared_parameters`) or one task (:meth:`task_parameters`). Both methods return only
    parameters with ``requires_grad`` (frozen ones are left out), so ``shared_parameters()`` plus
    all ``task_parameters(t)`` is a partition of the trainable parameters.

    **Freezing** (:meth:`freeze` / :meth:`unfreeze`), used by staged training: a frozen part's
    parameters get ``requires_grad = False`` (their ``.grad`` is cleared, so optimizers skip them)
    and its BatchNorm layers stay in eval mode even when ``model.train()`` is called, so their
    running statistics do not move either. Dropout of a frozen part follows ``train()``/``eval()``
    as usual. ``unfreeze`` restores each parameter's ``requires_grad`` as it was before ``freeze``.
    A :class:`~taskbalance.Balancer` keeps the list of shared parameters it was built with: build
    a new one after freezing or unfreezing the shared part.

    **Rep mode.** ``features`` is the shared representation of the last forward pass (the tensor
    every head consumed), or ``None`` where the architecture has no single such tensor
    (``supports_rep_mode`` is then ``False``).
    """

    task_names: tuple[str, ...]
    #: Whether ``features`` is a shared representation usable by the balancer's "rep" mode.
    supports_rep_mode: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._frozen: set[str] = set()
        self._saved_requires_grad: dict[str, list[bool]] = {}

    # -- to implement ---------------------------------------------------------------------------
    def shared_modules(self) -> list[nn.Module]:
        """Modules whose parameters are shared by all tasks."""
        raise NotImplementedError

    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules whose parameters belong to ``task`` only."""
        raise NotImplementedError

    @property
    def features(self) -> Tensor | None:
        """Shared representation of the last forward pass (``None`` if not supported)."""
        return None

    @property
    def head_inputs(self) -> dict[str, Tensor] | None:
        """Per task, the view of ``features`` its head consumed in the last forward pass, made
        for that head alone (``None`` where heads read ``features`` itself). Given to the
        balancer in rep mode, one backward yields every task's feature gradient."""
        return None

    # -- parameter split -----------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return len(self.task_names)

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise ValueError(f"unknown task {task!r}; tasks are {list(self.task_names)}")

    @staticmethod
    def _params_of(modules: Iterable[nn.Module]) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def _part_modules(self, part: str) -> list[nn.Module]:
        if part in SHARED_PART_NAMES:
            return self.shared_modules()
        if part in self.task_names:
            return self.task_modules(part)
        raise ValueError(
            f"unknown part {part!r}; valid parts are 'backbone' (or 'shared') and the tasks "
            f"{list(self.task_names)}"
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters shared by all tasks (those the balancer aggregates over)."""
        return [p for p in self._params_of(self.shared_modules()) if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Trainable parameters that only ``task`` uses."""
        self._check_task(task)
        return [p for p in self._params_of(self.task_modules(task)) if p.requires_grad]

    def _check_partition(self) -> None:
        """Raise ``ValueError`` if a parameter is in two parts or in none."""
        owner: dict[int, str] = {}
        for part in ("backbone", *self.task_names):
            for p in self._params_of(self._part_modules(part)):
                if id(p) in owner:
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} is used by both {owner[id(p)]!r} "
                        f"and {part!r}; modules used by several tasks belong in the shared part"
                    )
                owner[id(p)] = part
        for name, p in self.named_parameters():
            if id(p) not in owner:
                raise ValueError(
                    f"parameter {name!r} belongs neither to the shared part nor to a task"
                )

    # -- freezing -------------------------------------------------------------------------------
    @property
    def frozen_parts(self) -> frozenset[str]:
        """Parts currently frozen ('backbone' for the shared part, or task names)."""
        return frozenset(self._frozen)

    @staticmethod
    def _canonical(part: str) -> str:
        return "backbone" if part in SHARED_PART_NAMES else part

    def freeze(self, part: str) -> None:
        """Freeze ``part`` ('backbone'/'shared' or a task name): no gradient, no BN statistics."""
        modules = self._part_modules(part)
        key = self._canonical(part)
        if key in self._frozen:
            return
        params = list(self._params_of(modules))
        self._saved_requires_grad[key] = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        self._frozen.add(key)
        self._set_frozen_bn_eval()

    def unfreeze(self, part: str) -> None:
        """Undo :meth:`freeze` of ``part``; BatchNorm follows ``self.training`` again."""
        modules = self._part_modules(part)
        key = self._canonical(part)
        if key not in self._frozen:
            return
        params = list(self._params_of(modules))
        for p, flag in zip(params, self._saved_requires_grad.pop(key), strict=True):
            p.requires_grad_(flag)
        self._frozen.discard(key)
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, _BatchNorm):
                    sub.train(self.training)
        self._set_frozen_bn_eval()

    def _set_frozen_bn_eval(self) -> None:
        for part in self._frozen:
            for module in self._part_modules(part):
                for sub in module.modules():
                    if isinstance(sub, _BatchNorm):
                        sub.eval()

    def train(self, mode: bool = True) -> MultiTaskNetwork:
        """Set train/eval mode; BatchNorm layers of frozen parts stay in eval mode."""
        super().train(mode)
        self._set_frozen_bn_eval()
        return self

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """One independent single-task network per task (the "no sharing" baseline).

        Each is a :class:`MultiTaskModel` with one task, so it predicts ``{task: tensor}``.
        """
        raise NotImplementedError


class MultiTaskModel(MultiTaskNetwork):
    """Hard parameter sharing: a shared backbone and one head per task.

    Args:
        backbone: the shared module; ``backbone(x)`` is the representation every head consumes.
        heads: task name -> head module; ``heads[t](backbone(x))`` is task t's prediction.
        task_names: optional task order; then ``heads`` must have exactly these keys.
        rep_detach: if ``True``, heads consume a *detached* copy of the representation (a leaf
            tensor that requires grad): backpropagating the task losses then stops at
            ``features``, and :meth:`backward_shared` carries a gradient on to the backbone. With
            ``False`` (default) the graph runs through; the balancer's "rep" mode needs nothing
            more (it hooks the gradient at ``features``).

    ``features`` is the representation of the last forward pass (the tensor the heads consumed).
    For rep mode the backbone must return a single tensor.

    Example:
        >>> model = MultiTaskModel.from_layers(SmallCNN(1), {"a": ClassificationHead(64, 10),
        ...                                    "b": ClassificationHead(64, 10)}, branch_point=3)
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        *,
        task_names: Sequence[str] | None = None,
        rep_detach: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone)!r}")
        names, ordered = _match_heads(heads, task_names)
        self.task_names = names
        self.backbone = backbone
        self.heads = nn.ModuleDict(ordered)
        self.rep_detach = bool(rep_detach)
        self.branch_point: int | None = None
        self._features: Tensor | None = None
        self._features_source: Tensor | None = None
        self._head_inputs: dict[str, Tensor] | None = None
        self._check_partition()

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[nn.Module] | nn.Sequential,
        heads: Mapping[str, nn.Module] | Callable[[str], nn.Module],
        branch_point: int,
        *,
        task_names: Sequence[str] | None = None,
        reinitialize: bool = False,
        rep_detach: bool = False,
    ) -> MultiTaskModel:
        """Hard sharing of the first ``branch_point`` layers of a layer stack.

        ``layers[:branch_point]`` become the shared backbone; ``layers[branch_point:]`` are
        deep-copied once per task and put in front of that task's head (head module =
        ``Sequential(branch=Sequential(copied layers), head=head)``). ``branch_point=0`` shares
        nothing (independent networks fed the same input), ``branch_point=len(layers)`` shares
        every layer. An ``nn.Sequential`` (e.g. :class:`~taskbalance.models.SmallCNN`) is a valid
        ``layers``; the layers are used, not copied, for the shared part.

        Args:
            layers: the layer stack of the single-task network, input to output.
            heads: task name -> head, or a factory ``heads(task) -> nn.Module`` (then
                ``task_names`` is required).
            branch_point: number of shared layers, ``0 <= branch_point <= len(layers)``.
            task_names: task order (required with a factory).
            reinitialize: re-initialise each task's copies of the branch layers (default: every
                task starts from the same weights as ``layers``).
            rep_detach: see :class:`MultiTaskModel`.
        """
        if isinstance(layers, nn.Sequential):
            layer_names = [name for name, _ in layers.named_children()]
        else:
            layer_names = [str(i) for i in range(len(layers))]
        layer_list = list(layers)
        for i, layer in enumerate(layer_list):
            if not isinstance(layer, nn.Module):
                raise TypeError(f"layers[{i}] must be an nn.Module, got {type(layer)!r}")
        if not is_int(branch_point):
            raise TypeError(f"branch_point must be an int, got {branch_point!r}")
        if not 0 <= branch_point <= len(layer_list):
            raise ValueError(
                f"branch_point={branch_point} is out of range: it must be between 0 (nothing "
                f"shared) and {len(layer_list)} (all layers shared)"
            )
        if callable(heads) and not isinstance(heads, Mapping):
            if task_names is None:
                raise ValueError("task_names is required when heads is a factory")
            names = _validate_task_names(task_names)
            head_map: Mapping[str, nn.Module] = {t: heads(t) for t in names}
        else:
            head_map = heads  # type: ignore[assignment]
        names, ordered = _match_heads(head_map, task_names)
        backbone = nn.Sequential(
            OrderedDict(zip(layer_names[:branch_point], layer_list[:branch_point], strict=True))
        )
        branched: dict[str, nn.Module] = {}
        for task in names:
            tail = [copy.deepcopy(layer) for layer in layer_list[branch_point:]]
            if tail:
                branch = nn.Sequential(
                    OrderedDict(zip(layer_names[branch_point:], tail, strict=True))
                )
                if reinitialize:
                    reset_parameters(branch)
                branched[task] = nn.Sequential(
                    OrderedDict([("branch", branch), ("head", ordered[task])])
                )
            else:
                branched[task] = ordered[task]
        model = cls(backbone, branched, task_names=names, rep_detach=rep_detach)
        model.branch_point = branch_point
        return model

    def shared_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        return [self.heads[task]]

    @property
    def features(self) -> Tensor | None:
        """The representation the heads consumed in the last forward pass (``None`` before)."""
        return self._features

    @property
    def head_inputs(self) -> dict[str, Tensor] | None:
        """Per task, the view of ``features`` its head consumed (see the base class)."""
        return self._head_inputs

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predictions per task: ``{task: heads[task](backbone(x))}``."""
        z = self.backbone(x)
        if self.rep_detach:
            if not isinstance(z, Tensor):
                raise TypeError("rep_detach=True needs a backbone that returns a single tensor")
            self._features_source = z
            z = z.detach().requires_grad_(True)
        self._features = z if isinstance(z, Tensor) else None
        if self._features is None or self.rep_detach:
            self._head_inputs = None
            return {task: self.heads[task](z) for task in self.task_names}
        # Each head reads its own view of z (same values): rep mode then gets every task's
        # gradient at z from one backward instead of one per task.
        self._head_inputs = {task: z.view_as(z) for task in self.task_names}
        return {task: self.heads[task](self._head_inputs[task]) for task in self.task_names}

    def backward_shared(self, grad: Tensor | None = None) -> None:
        """With ``rep_detach=True``: backpropagate ``grad`` (default ``features.grad``) into the
        backbone from the last forward's graph."""
        if not self.rep_detach:
            raise RuntimeError("backward_shared() is only needed with rep_detach=True")
        if self._features_source is None or self._features is None:
            raise RuntimeError("call forward() before backward_shared()")
        if grad is None:
            grad = self._features.grad
            if grad is None:
                raise RuntimeError("features.grad is None: backpropagate the task losses first")
        self._features_source.backward(grad)

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """Independent single-task networks: a copy of the backbone and of one head each."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            net = MultiTaskModel(
                copy.deepcopy(self.backbone), {task: copy.deepcopy(self.heads[task])}
            )
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out

    def extra_repr(self) -> str:
        bp = "" if self.branch_point is None else f", branch_point={self.branch_point}"
        return f"tasks={list(self.task_names)}{bp}"
