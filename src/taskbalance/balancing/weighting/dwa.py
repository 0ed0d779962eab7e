"""Dynamic weight average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import LossMethod, check_positive, follow, present_mask
from ..registry import register


@register(
    "dwa",
    paper="Liu, Johns & Davison, End-to-end multi-task learning with attention (MTAN), "
    "CVPR 2019, https://arxiv.org/abs/1803.10704",
)
class DynamicWeightAverage(LossMethod):
    """Dynamic weight average: weights from the rate at which each epoch-mean loss falls.

    After epochs ``k−1`` and ``k−2`` (means given to :meth:`epoch_end`)::

        r_t = L_t(k−1) / L_t(k−2),   w_t = T·exp(r_t/τ) / Σ_i exp(r_i/τ)

    with temperature ``τ`` (paper: 2). ``w = 1`` until every task present has two epoch means
    (the first two epochs). A task that learns slowly (ratio near or above 1) gets more weight.
    The weights are fixed within an epoch; in a step where some tasks are absent the softmax is
    over the tasks present and scaled to their number (so with equal ratios every present task
    has weight 1, as in equal weighting).

    Args:
        temperature: ``τ`` (> 0); larger is closer to equal weights.

    Paper: https://arxiv.org/abs/1803.10704
    """

    history: Tensor
    epochs_seen: Tensor

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        self.temperature = check_positive("temperature", temperature)
        # history[0] = L(k−2), history[1] = L(k−1), per task.
        self.register_buffer("history", torch.zeros(2, num_tasks))
        self.register_buffer("epochs_seen", torch.zeros(num_tasks, dtype=torch.long))

    def reset(self) -> None:
        super().reset()
        self.history.zero_()
        self.epochs_seen.zero_()

    def epoch_end(self, mean_losses: Tensor, present: Tensor | None = None) -> None:
        """Record the epoch's mean task losses ``[T]``.

        A task without any labelled sample in the epoch is marked by ``NaN`` in ``mean_losses``
        (the mean of nothing) or by ``False`` in ``present``; its history is left unchanged.
        """
        T = self.num_tasks
        if not isinstance(mean_losses, Tensor) or not mean_losses.is_floating_point():
            raise TypeError(
                f"mean_losses must be a floating-point tensor of shape [{T}], got "
                f"{type(mean_losses).__name__}"
            )
        if mean_losses.shape != (T,):
            raise ValueError(
                f"expected {T} epoch-mean task losses (shape [{T}]), got shape "
                f"{list(mean_losses.shape)}"
            )
        m = mean_losses.detach()
        p = ~torch.isnan(m)
        if present is not None:
            if not isinstance(present, Tensor) or present.shape != (T,):
                raise ValueError(f"present must be a bool tensor of shape [{T}]")
            p = p & present.to(device=m.device, dtype=torch.bool)
        if bool(torch.isinf(m[p]).any()):
            raise ValueError(f"epoch-mean losses must be finite, got {m.tolist()}")
        hist = follow(self.history, m)
        seen = follow(self.epochs_seen, m)
        cur = torch.where(p, m, 0.0).to(hist.dtype)
        prev2 = torch.where(p, hist[1], hist[0])
        prev1 = torch.where(p, cur, hist[1])
        self.history = torch.stack([prev2, prev1])
        self.epochs_seen = seen + p.long()

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        p = present_mask(losses, present)
        hist = self.history = follow(self.history, losses)
        seen = self.epochs_seen = follow(self.epochs_seen, losses)
        finfo = torch.finfo(hist.dtype)
        ratio = hist[1] / hist[0].clamp_min(finfo.tiny)
        logits = (ratio / self.temperature).clamp(-finfo.max, finfo.max)
        logits = torch.where(p, logits, -torch.inf)
        w = p.sum() * torch.softmax(logits, 0)
        ready = ((seen >= 2) | ~p).all()
        w = torch.where(ready, w, 1.0)
        w = torch.where(p, w, 0.0).to(losses.dtype)
        self.last_weights = w
        return w * losses

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, temperature={self.temperature}"
