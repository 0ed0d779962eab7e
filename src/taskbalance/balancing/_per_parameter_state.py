"""Per-parameter (``[T, P]``) state of gradient methods that keep statistics of J itself
(ExcessMTL, DB-MTL, MoCo)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PerParameterState"]


class PerParameterState:
    """Mixin for methods with ``[T, P]`` state buffers created at the first call (P is known
    only then): loading a ``state_dict`` resizes them first, and a later ``J`` with another
    ``P`` raises (such state belongs to one set of shared parameters: param mode only)."""

    _per_parameter_buffers: tuple[str, ...] = ()
    #: Read by the Balancer: rep mode is refused (its "parameters" are per-sample features).
    supports_rep_mode = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        for name in self._per_parameter_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def _check_width(self, name: str, state: Tensor, J: Tensor) -> bool:
        """True when the state must be created (empty); raises when ``P`` changed."""
        if state.numel() == 0:
            return True
        if state.shape[1] != J.shape[1]:
            raise ValueError(
                f"method {getattr(self, 'name', '')!r} keeps per-parameter state ({name}) for "
                f"P={state.shape[1]} shared values but got gradients with P={J.shape[1]}; it "
                "works in param mode only (rep-mode features change size with the batch) - use "
                "mode='param', or reset() the method for a new model"
            )
        return False


def _row_scaled(Y: Tensor) -> tuple[Tensor, Tensor]:
    """``(Y / top, top)`` with ``top`` each row's largest magnitude (1 for zero rows): one
    temporary of Y's size and dtype whose squares neither overflow nor underflow."""
    top = Y.detach().abs().amax(dim=1) if Y.shape[1] > 0 else Y.new_zeros(Y.shape[0])
    top = torch.where(top > 0, top, torch.ones_like(top))
    return Y.detach() / top[:, None], top.to(torch.float64)


def device_gramian(Y: Tensor) -> Tensor:
    """``Y Yᵀ`` in float64 on ``Y``'s device, with no host synchronisation.

    Each row is divided by its largest magnitude before the product (one temporary of Y's size
    and dtype), so squares of float32 rows from 1e-30 to 1e30 neither overflow nor underflow;
    the row scales are multiplied back in float64. For statistics of the methods' own state
    (``solvers.gramian`` decides on the host, which costs a device-to-host copy).
    """
    Yn, t64 = _row_scaled(Y)
    # Half rows: the product in float32 (its entries reach P, beyond float16's range).
    Yn = Yn.to(torch.promote_types(Yn.dtype, torch.float32))
    G = (Yn @ Yn.T).to(torch.float64)
    G = G * (t64[:, None] * t64[None, :])
    return 0.5 * (G + G.T)


def device_row_norms(Y: Tensor) -> Tensor:
    """``‖y_t‖`` per row, float64 on ``Y``'s device, no host synchronisation: the diagonal of
    :func:`device_gramian` (same scaling, same range) without the ``T x T`` product."""
    Yn, t64 = _row_scaled(Y)
    acc = torch.promote_types(Yn.dtype, torch.float32)  # half rows: sum of P squares ≤ P
    return torch.linalg.vector_norm(Yn, dim=1, dtype=acc).to(torch.float64) * t64
