"""Mixed precision of a run: which autocast a forward pass uses and, for float16, the loss
scaling that keeps small gradients representable while the balancing method sees the true losses.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["AMP_DTYPES", "Precision", "ScaleGrad"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

T = TypeVar("T")


class ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` (float16 loss scaling that leaves the
    loss values seen by the balancing method unchanged)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


class Precision:
    """The precision policy of a run.

    Args:
        amp: CUDA mixed precision (``torch.autocast``); ``False`` runs in the model's dtype.
        amp_dtype: ``"bfloat16"`` or ``"float16"``; float16 adds a ``GradScaler``.
        device: the run's device (AMP needs CUDA).
        method: the balancing method (float16 scaling changes gradient norms, which GradNorm
            compares, and multiplies J, which only positively homogeneous aggregators ignore).
    """

    def __init__(self, amp: bool, amp_dtype: str, device: torch.device, method: Any) -> None:
        self.amp = bool(amp)
        dtype = AMP_DTYPES.get(amp_dtype)
        if dtype is None:
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
        self.dtype = dtype
        self.scaler: torch.amp.GradScaler | None = None
        if not self.amp:
            return
        if device.type != "cuda":
            raise ValueError(
                f"amp=True needs a CUDA device (got {device}); mixed precision is not "
                "supported here, set amp=False"
            )
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bfloat16 support; use amp_dtype='float16'")
        if dtype == torch.float16:
            self._check_float16(method)
            self.scaler = torch.amp.GradScaler("cuda")

    @staticmethod
    def _check_float16(method: Any) -> None:
        if getattr(method, "needs_last_layer_grad_norms", False):
            raise ValueError(
                f"method {method.name!r} compares gradient norms, which float16 loss "
                "scaling changes; use amp_dtype='bfloat16'"
            )
        if method.kind == "gradient":
            warnings.warn(
                f"float16 AMP: {method.name!r} aggregates per-task gradients multiplied by "
                "the loss scale; exact only for aggregators that are positively "
                "homogeneous in J. Prefer amp_dtype='bfloat16'.",
                RuntimeWarning,
                stacklevel=4,
            )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context of a forward pass."""
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def prepare_losses(
        self, losses: Mapping[str, Tensor | None]
    ) -> tuple[dict[str, Tensor | None], Tensor | None]:
        """Losses in float32 for the Balancer, their gradients scaled under float16; returns
        ``(losses, scale)`` (``scale`` is ``None`` without scaling; read without a host sync)."""
        if self.scaler is None:
            return {k: None if v is None else v.float() for k, v in losses.items()}, None
        ref = next(v for v in losses.values() if v is not None)
        scale = self.scaler.scale(torch.ones((), device=ref.device))
        return {
            k: None if v is None else ScaleGrad.apply(v.float(), scale) for k, v in losses.items()
        }, scale

    def unscale(
        self, optimizer: torch.optim.Optimizer, extra: Iterable[nn.Parameter], scale: Tensor | None
    ) -> None:
        """Bring every gradient back to its true size before clipping. The method's own
        parameters (``extra``) were not behind the scaled losses: scale them first, so that
        ``unscale_`` divides every gradient by the same factor."""
        if self.scaler is None or scale is None:
            return
        for p in extra:
            if p.grad is not None:
                p.grad.mul_(scale)
        self.scaler.unscale_(optimizer)

    def skip(self, optimizer: torch.optim.Optimizer, info: T) -> T:
        """A step skipped for non-finite gradients (``info``, returned): no update, its
        gradients dropped (task heads may hold some), the float16 loss scale lowered as the
        scaler does after an overflow (otherwise the next step would overflow alike)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
        return info

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the scaler when a scaled gradient overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
