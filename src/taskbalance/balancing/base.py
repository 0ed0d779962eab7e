"""Base classes shared by every balancing method.

Two kinds of method exist (see ``docs/architecture.md``):

* ``"loss"`` methods turn the vector of task losses ``L`` into one scalar to backpropagate
  (:meth:`LossMethod.combine`);
* ``"gradient"`` methods turn the per-task gradient matrix ``J`` (``[T, P]``) into one update
  direction (:meth:`GradientMethod.aggregate`).

Both kinds can be asked to balance only the tasks present in a batch (labels may be missing):
``combine(L, present)`` validates and forwards to :meth:`LossMethod.combine_present`; the
Balancer, which has validated the step already, calls :meth:`LossMethod.combine_present`,
:meth:`GradientMethod.solve` (weights from the Gramian) and
:meth:`GradientMethod.aggregate_present` (methods that need ``J``) directly. Those receive a
boolean ``present`` mask over the ``T`` tasks (``None`` when all are present). Subclasses
implement the hooks ``_terms`` / ``_combine``, ``_weights`` or ``_aggregate``; callers never do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from taskbalance.validation import check_choice, check_finite_losses, check_positive, is_int

from .solvers import combine, first_nonfinite_row, first_nonfinite_row_of, gramian

__all__ = [
    "SAMPLING",
    "GradientMethod",
    "LossMethod",
    "Method",
    "NonFiniteGradientError",
    "check_choice",
    "check_jacobian",
    "check_losses",
    "check_present",
    "check_pref_weights",
    "check_positive",
    "check_task_weights",
    "follow",
    "imtl_l_transform",
    "independent_gramians",
    "make_generator",
    "present_mask",
]


#: The ``sampling`` choices of the double-sampling methods (MoDo, SDMGrad).
SAMPLING = ("independent", "single")


class Method(nn.Module):
    """Common state of every balancing method.

    Methods are ``nn.Module`` so that learnable ones (uncertainty weighting, GradNorm, IMTL-L)
    expose their parameters to the optimizer and every method's state travels in a
    ``state_dict`` (checkpoints).
    """

    kind: ClassVar[str] = ""
    #: Registry name, e.g. ``"pcgrad"``; set by :func:`taskbalance.balancing.registry.register`.
    name: ClassVar[str] = ""
    #: Citation shown by ``taskbalance methods``.
    paper: ClassVar[str] = ""
    #: Whether the method is meant for rep mode (gradients w.r.t. shared features).
    prefers_rep_mode: ClassVar[bool] = False

    #: ``"positive"`` or ``"non-negative"`` for methods that take the logarithm of the losses
    #: (GLS, STCH, DB-MTL), ``None`` for any finite loss. Checked by the public ``combine`` /
    #: ``aggregate`` / ``weights`` and by the Balancer together with its finite check (one
    #: host sync per step, the error names the task); the hooks do not check again.
    loss_sign: str | None = None

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if not is_int(num_tasks) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks
        self.last_weights: Tensor | None = None
        #: Random source of randomised methods (set from their ``seed`` option).
        self.generator: torch.Generator | None = None

    def get_extra_state(self) -> dict[str, Tensor]:
        # The generator's state travels in state_dict, so a resumed run draws what it would have.
        return {} if self.generator is None else {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        saved = state.get("generator_state") if isinstance(state, dict) else None
        if saved is None:
            return
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.set_state(saved)

    def reset(self) -> None:
        """Forget state accumulated during training (running means, EMAs, epoch history)."""
        self.last_weights = None

    def transform_losses(self, losses: Tensor) -> Tensor:
        """Map raw task losses to the losses whose gradients are balanced (default: identity).

        Element-wise per task, so absent tasks can simply be skipped afterwards.
        """
        return losses

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"

    def epoch_end(self, mean_losses: Tensor, present: Tensor | None = None) -> None:
        """Called once per epoch with the epoch's mean task losses ``[T]`` (``NaN`` for a task
        without any labelled sample in the epoch, or ``False`` in ``present``); a no-op unless a
        method updates per epoch (DWA, STCH). Every method has it, so callers need no check."""
        del mean_losses, present


class LossMethod(Method):
    """A method that weights task losses: ``combine(L) -> scalar``.

    Subclasses implement :meth:`_terms`, the per-task contributions to the total (weighted loss
    plus any regulariser of that task), and set ``last_weights``. The total is the sum of the
    terms of the tasks present.
    """

    kind: ClassVar[str] = "loss"
    #: Set by methods that need ``‖∇_W L_t‖`` on the last shared layer W (GradNorm).
    needs_last_layer_grad_norms: ClassVar[bool] = False

    def combine(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """The scalar to backpropagate for a loss vector of shape ``[T]``.

        ``present``: bool ``[T]``, ``False`` for a task without labels in the batch (its entry
        in ``losses`` is a finite placeholder and is ignored); ``None`` when all are present.

        Raises:
            ValueError: losses not a finite ``[T]`` vector (the error names the task); a
                ``present`` mask that is not ``T`` bools with at least one ``True``.
        """
        present = check_present(present, self.num_tasks)
        check_losses(losses, self.num_tasks, sign=self.loss_sign, present=present, method=self.name)
        return self.combine_present(losses, present)

    def combine_present(self, losses: Tensor, present: Tensor | None) -> Tensor:
        """:meth:`combine` without validation, for a caller that has checked the losses and
        the mask already (the Balancer, once per step). Updates the method's state."""
        return self._combine(losses, present)

    def _combine(self, losses: Tensor, present: Tensor | None) -> Tensor:
        terms = self._terms(losses, present)
        if present is not None:
            terms = terms[present]
        return terms.sum()

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        raise NotImplementedError

    def observe_grad_norms(self, norms: Tensor) -> None:
        """Receive ``‖∇_W L_t‖`` [T] before :meth:`combine_present` (if
        ``needs_last_layer_grad_norms``)."""
        del norms


class GradientMethod(Method):
    """A method that aggregates per-task gradients: ``aggregate(J) -> d``.

    Two ways to implement one:

    * **Weights from the Gramian** (most methods): the direction is ``d = Σ_t w_t g_t`` with
      weights that depend only on ``G = J Jᵀ`` (and the losses). Set ``uses_gramian = True`` and
      implement :meth:`_weights`, which receives ``G`` as a float64 CPU tensor (the Balancer
      computes it once per step, shares it with its statistics, and can accumulate it without
      ever holding ``J``: ``Balancer(..., memory="gramian")``). Solvers then run on the host:
      one device-to-host transfer of ``n²`` numbers per step, no synchronisation inside loops.
    * **Needs J itself** (e.g. GradDrop, which works coordinate by coordinate): implement
      :meth:`_aggregate`.

    Both work for any number of rows (the tasks present); stateful methods use ``present``
    (a CPU bool mask over the ``T`` tasks, ``None`` when all are present) to index their state.
    """

    kind: ClassVar[str] = "gradient"
    #: Set by methods whose aggregation uses the loss values too (e.g. MGDA's loss normalisation).
    needs_losses: bool = False
    #: ``True`` when the direction is ``Σ_t w_t g_t`` with ``w = _weights(G, ...)``.
    uses_gramian: ClassVar[bool] = False
    #: Independent samples of the per-task gradients one update needs: 1 (one batch), or 3 for
    #: the double-sampling rule of :meth:`aggregate_independent` (MoDo, SDMGrad with
    #: ``sampling="independent"``): the Trainer then splits each batch into 3 disjoint parts.
    independent_batches: int = 1

    def aggregate(self, J: Tensor, losses: Tensor | None = None) -> Tensor:
        """The update direction ``d`` (shape ``[P]``, dtype and device of ``J``).

        A row of ``J`` holding NaN or Inf raises ``ValueError`` naming the row.
        """
        check_jacobian(J, self.num_tasks)
        losses = self._check_losses_arg(losses, J.dtype)
        if not self.uses_gramian:
            bad = first_nonfinite_row_of(J)
            if bad is not None:
                raise_nonfinite_gradient(f"row {bad} (task {bad})")
            return self._aggregate(J, losses, None)
        G = gramian(J, device="cpu")
        bad_row = first_nonfinite_row(G)
        if bad_row is not None:
            raise_nonfinite_gradient(f"row {bad_row} (task {bad_row})")
        w = self.solve(G, losses, None, dtype=J.dtype, device=J.device)
        return combine(w, J)

    def weights(self, G: Tensor, losses: Tensor | None = None) -> Tensor:
        """The weights ``w`` (``d = Σ_t w_t g_t``) for a Gramian ``G = J Jᵀ`` of shape [T, T].

        Only for methods with ``uses_gramian``; returns float64 weights on the CPU.
        """
        if not self.uses_gramian:
            raise ValueError(
                f"method {self.name!r} needs the per-task gradients themselves, not only their "
                "Gramian: call aggregate(J)"
            )
        T = self.num_tasks
        if not isinstance(G, Tensor) or G.shape != (T, T) or not G.is_floating_point():
            shape = list(G.shape) if isinstance(G, Tensor) else type(G).__name__
            raise ValueError(f"G must be a floating-point tensor of shape [{T}, {T}], got {shape}")
        G = G.detach().to("cpu", torch.float64)
        bad_row = first_nonfinite_row(G)
        if bad_row is not None:
            raise_nonfinite_gradient(f"row {bad_row} (task {bad_row})")
        losses = self._check_losses_arg(losses, torch.float64)
        return self.solve(0.5 * (G + G.T), losses, None, dtype=torch.float64, device=G.device)

    def solve(
        self,
        G: Tensor,
        losses: Tensor | None,
        present: Tensor | None,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tensor:
        """Weights from a finite, symmetric float64 host Gramian of the ``n`` tasks present.

        Used by :meth:`aggregate` and the Balancer (no validation here). Returns float64 CPU
        weights and sets ``last_weights`` (``dtype``/``device``: those of the gradients).
        """
        if losses is not None:
            losses = losses.detach().to("cpu", torch.float64)
        w = self._weights(G, losses, present, grad_dtype=dtype)
        self.last_weights = self._reported_weights(w.to(device=device, dtype=dtype), present)
        return w

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        """float64 weights ``[n]`` from the float64 CPU Gramian ``[n, n]`` of the tasks present.

        ``grad_dtype``: the dtype the gradients had (for tolerances tied to their precision).
        """
        raise NotImplementedError

    def _reported_weights(self, w: Tensor, present: Tensor | None) -> Tensor:
        """``last_weights`` for combination weights ``w`` (on the gradients' device)."""
        del present
        return w.detach()

    def aggregate_present(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        """The direction for the ``n`` tasks present, without validation: for a caller that has
        checked ``J`` already (the Balancer, once per step).

        Args:
            J: ``[n, P]``, finite, the gradient rows of the tasks present, in task order.
            losses: ``[n]`` losses of the tasks present (``None`` unless ``needs_losses``).
            present: bool ``[T]`` over all tasks (``None`` when all are present); stateful
                methods index their per-task state with it.
        """
        return self._aggregate(J, losses, present)

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        """Hook: ``d`` for the ``n`` rows present (methods that need J; others use the
        Gramian)."""
        if not self.uses_gramian:
            raise NotImplementedError
        w = self.solve(gramian(J, "cpu"), losses, present, dtype=J.dtype, device=J.device)
        return combine(w, J)

    def aggregate_independent(self, Js: Sequence[Tensor], losses: Tensor | None = None) -> Tensor:
        """The update from the per-task gradients ``[J₁, J₂, J₃]`` of three independent samples
        (e.g. disjoint parts of an i.i.d. batch), for a method with ``independent_batches == 3``.

        Double sampling: the weights come from the cross-Gramian ``G₁₂ = J₁ J₂ᵀ`` (an unbiased
        estimate of ``G = J Jᵀ``, unlike ``J₁ J₁ᵀ``), and the direction is ``d = Σ_t w_t J₃[t]``
        (independent of the weights). ``losses``: ``[T]``, e.g. the mean over the samples.
        """
        if self.independent_batches != 3:
            raise ValueError(
                f"method {self.name!r} takes one sample of the gradients per step: call "
                "aggregate(J) (aggregate_independent is for a method created with "
                "sampling='independent')"
            )
        if not isinstance(Js, Sequence) or len(Js) != 3:
            got = len(Js) if isinstance(Js, Sequence) else type(Js).__name__
            raise ValueError(f"Js must be 3 per-task gradient matrices [J1, J2, J3], got {got}")
        for J in Js:
            check_jacobian(J, self.num_tasks)
        if len({(J.shape, J.dtype, J.device) for J in Js}) != 1:
            raise ValueError("J1, J2 and J3 must have the same shape, dtype and device")
        losses = self._check_losses_arg(losses, Js[0].dtype)
        G = gramian(torch.cat([J.detach() for J in Js]), device="cpu")
        bad = first_nonfinite_row(G)
        if bad is not None:
            t = bad % self.num_tasks
            raise_nonfinite_gradient(f"row {t} of J{bad // self.num_tasks + 1} (task {t})")
        cross, _ = independent_gramians(G, self.num_tasks)
        J3 = Js[2]
        w = self.solve(cross, losses, None, dtype=J3.dtype, device=J3.device)
        return combine(w, J3)

    def _check_losses_arg(self, losses: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        if losses is not None:
            check_losses(losses, self.num_tasks, sign=self.loss_sign, method=self.name)
            return losses.detach().to(dtype)
        if self.needs_losses:
            raise ValueError(
                f"method {self.name!r} needs the task losses: call aggregate(J, losses)"
            )
        return None


class NonFiniteGradientError(ValueError):
    """A per-task gradient holds NaN or Inf: no method can balance it."""


def independent_gramians(G: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """From the Gramian ``[3n, 3n]`` of the stacked ``[J₁; J₂; J₃]`` (``n`` rows each): the
    cross-Gramian ``J₁ J₂ᵀ`` that double sampling solves the weights with, and the Gramian
    of the mean ``(J₁ + J₂ + J₃)/3`` (the whole batch's gradients, for statistics)."""
    blocks = G.reshape(3, n, 3, n)
    return blocks[0, :, 1, :], blocks.sum(dim=(0, 2)) / 9.0


def raise_nonfinite_gradient(task: str, hint: str = "") -> None:
    raise NonFiniteGradientError(
        f"the gradient of {task} holds NaN or Inf; it cannot be balanced - check that task's "
        "loss for a NaN-producing operation (log or sqrt of 0, division by 0) or lower the "
        f"learning rate{hint}"
    )


def check_losses(
    losses: Tensor,
    num_tasks: int,
    names: Sequence[str] | None = None,
    *,
    sign: str | None = None,
    present: Tensor | None = None,
    method: str = "",
) -> Tensor:
    """Validate a loss vector: shape ``[T]``, floating point, finite and of the method's
    ``sign`` where ``present`` (see :func:`~taskbalance.validation.check_finite_losses`)."""
    if not isinstance(losses, Tensor):
        raise TypeError(
            f"losses must be a tensor of shape [{num_tasks}], got {type(losses).__name__}"
        )
    if losses.shape != (num_tasks,):
        raise ValueError(
            f"expected {num_tasks} task losses (a tensor of shape [{num_tasks}]), "
            f"got shape {list(losses.shape)}"
        )
    if not losses.is_floating_point():
        raise TypeError(f"losses must be floating point, got {losses.dtype}")
    check_finite_losses(losses, names, sign=sign, present=present, method=method)
    return losses


def check_present(present: Tensor | None, num_tasks: int) -> Tensor | None:
    """Validate a ``present`` mask: ``T`` bools (or 0/1 integers), at least one ``True``."""
    if present is None:
        return None
    if not isinstance(present, Tensor) or present.shape != (num_tasks,):
        got = list(present.shape) if isinstance(present, Tensor) else type(present).__name__
        raise ValueError(
            f"present must be a bool tensor of shape [{num_tasks}] (True = the task has labels "
            f"in this batch), got {got}"
        )
    if present.dtype != torch.bool:
        if present.is_floating_point() or bool(((present != 0) & (present != 1)).any()):
            raise ValueError(f"present must hold bools (or 0/1), got {present.tolist()}")
        present = present.to(torch.bool)
    if not bool(present.any()):
        raise ValueError("present must mark at least one task (every entry is False)")
    return present


def check_jacobian(J: Tensor, num_tasks: int) -> Tensor:
    """Validate a per-task gradient matrix of shape ``[T, P]``."""
    if not isinstance(J, Tensor):
        raise TypeError(f"J must be a tensor of shape [{num_tasks}, P], got {type(J).__name__}")
    if J.dim() != 2 or J.shape[0] != num_tasks:
        raise ValueError(
            f"J must have shape [num_tasks={num_tasks}, P] (one gradient row per task), "
            f"got shape {list(J.shape)}"
        )
    if not J.is_floating_point():
        raise TypeError(f"J must be floating point, got {J.dtype}")
    return J


def make_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for an int seed; a generator passes through; None means the global RNG."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if not is_int(seed):
        raise ValueError(f"seed must be an int or a torch.Generator, got {seed!r}")
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def check_task_weights(name: str, weights: Sequence[float] | Tensor, num_tasks: int) -> Tensor:
    """Validate one finite weight ``>= 0`` per task; returns them as a float64 CPU tensor."""
    raw = weights.tolist() if isinstance(weights, Tensor) else list(weights)
    values = [float(w) for w in raw]
    if len(values) != num_tasks or not all(0 <= w < math.inf for w in values):
        raise ValueError(
            f"{name} must be {num_tasks} finite numbers >= 0 (one per task), got {values}"
        )
    return torch.tensor(values, dtype=torch.float64)


def check_pref_weights(
    pref_weights: Sequence[float] | Tensor | None, num_tasks: int
) -> Tensor | None:
    """``pref_weights`` of a method that averages with them (None stays None): one finite
    weight ``>= 0`` per task, not all zero; a float64 CPU tensor."""
    if pref_weights is None:
        return None
    p = check_task_weights("pref_weights", pref_weights, num_tasks)
    if not bool(p.any()):
        raise ValueError(f"pref_weights must not be all zero, got {p.tolist()}")
    return p


# Helpers shared by several methods (method modules import these, never each other).


def follow(state: Tensor, like: Tensor) -> Tensor:
    """``state`` moved to ``like``'s device, floating state promoted to at least ``like``'s dtype.

    Method state is kept in buffers (it travels in ``state_dict``); it follows the losses so a
    method works on any device without being moved by hand.
    """
    if state.is_floating_point():
        dtype = torch.promote_types(state.dtype, like.dtype)
        return state.to(device=like.device, dtype=dtype)
    return state.to(device=like.device)


def present_mask(losses: Tensor, present: Tensor | None) -> Tensor:
    """The boolean ``present`` mask on the losses' device (all ``True`` for ``None``)."""
    if present is None:
        return torch.ones(losses.shape[0], dtype=torch.bool, device=losses.device)
    return present.to(device=losses.device, dtype=torch.bool)


def imtl_l_transform(losses: Tensor, s: Tensor) -> Tensor:
    """IMTL-L's element-wise loss transform ``e^{s_t}·L_t − s_t``.

    ``s`` (the learnable log-scales, shape ``[T]``) is cast to the losses' device and dtype
    differentiably, so gradients reach both the network and ``s``. Minimising over ``s_t``
    drives ``e^{s_t} L_t`` towards 1: every scaled loss ends in the same range.
    Shared by the ``imtl_l`` loss method and the combined ``imtl`` gradient method.
    """
    s = s.to(device=losses.device, dtype=losses.dtype)
    return torch.exp(s) * losses - s
