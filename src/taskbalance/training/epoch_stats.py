"""Statistics of a training epoch (losses, weights, gradient norms and cosines per task),
summed on the device step by step and read back once per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.balancing import StepInfo

__all__ = ["EpochStats"]


class EpochStats:
    """Per-epoch sums of StepInfo statistics, kept on the device."""

    def __init__(
        self, num_tasks: int, device: torch.device, *, affinity_lr: float | None = None
    ) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        z = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        self.dtype = dtype
        self.loss_sum, self.loss_count = z(num_tasks), z(num_tasks)
        self.w_sum, self.w_count = z(num_tasks), z(num_tasks)
        self.gn_sum, self.gn_count = z(num_tasks), z(num_tasks)
        self.cos_sum, self.cos_count = z(num_tasks, num_tasks), z(num_tasks, num_tasks)
        self.has_weights = self.has_norms = self.has_cos = False
        # First-order TAG affinity (Fifty et al. 2021): lr·g_i·g_j / L_j, see
        # taskbalance.experiments.diagnostics.tag_affinity; None: not requested.
        self.affinity_lr = affinity_lr
        self.aff_sum, self.aff_count = z(num_tasks, num_tasks), z(num_tasks, num_tasks)
        self.steps = 0
        self.skipped = 0
        #: Steps the Balancer skipped for a non-finite task gradient (``nonfinite="skip"``).
        self.nonfinite = 0

    def add(self, info: StepInfo) -> None:
        if info.skipped:  # no update was made: its losses do not enter the epoch's means
            self.nonfinite += 1
            return
        p = info.present.to(self.dtype)
        self.loss_sum += info.losses.detach().to(self.dtype) * p
        self.loss_count += p
        if info.weights is not None:
            self.has_weights = True
            self.w_sum += info.weights.detach().to(self.dtype) * p
            self.w_count += p
        if info.grad_norms is not None:
            self.has_norms = True
            self.gn_sum += info.grad_norms.detach().to(self.dtype) * p
            self.gn_count += p
        if info.cosines is not None:
            self.has_cos = True
            pp = torch.outer(p, p)
            self.cos_sum += info.cosines.detach().to(self.dtype) * pp
            self.cos_count += pp
            if self.affinity_lr is not None and info.grad_norms is not None:
                self._add_affinity(info, pp)
        self.steps += 1

    def _add_affinity(self, info: StepInfo, pp: Tensor) -> None:
        assert self.affinity_lr is not None
        n = info.grad_norms.detach().to(self.dtype)  # type: ignore[union-attr]
        losses = info.losses.detach().to(self.dtype)
        gram = torch.outer(n, n) * info.cosines.detach().to(self.dtype)  # type: ignore[union-attr]
        ok = pp * (losses > 0).to(self.dtype)[None, :]  # the relative change of L_j is defined
        self.aff_sum += self.affinity_lr * gram / torch.where(losses > 0, losses, 1.0) * ok
        self.aff_count += ok

    def mean_losses(self) -> Tensor:
        """Mean loss per task over the epoch; ``NaN`` for a task that had no label at all."""
        mean = self.loss_sum / self.loss_count.clamp_min(1)
        return torch.where(self.loss_count > 0, mean, torch.full_like(mean, math.nan))

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """Plain numbers; one device synchronisation."""
        packed = (
            torch.cat(
                [
                    torch.stack(
                        [
                            self.loss_sum,
                            self.loss_count,
                            self.w_sum,
                            self.w_count,
                            self.gn_sum,
                            self.gn_count,
                        ]
                    ).flatten(),
                    self.cos_sum.flatten(),
                    self.cos_count.flatten(),
                ]
            )
            .cpu()
            .tolist()
        )
        T = len(names)
        rows = [packed[i * T : (i + 1) * T] for i in range(6)]
        cos_sum = packed[6 * T : 6 * T + T * T]
        cos_count = packed[6 * T + T * T :]

        def means(s: list[float], c: list[float]) -> dict[str, float | None]:
            return {n: (s[i] / c[i] if c[i] > 0 else None) for i, n in enumerate(names)}

        out: dict[str, Any] = {
            "train_loss": means(rows[0], rows[1]),
            "weights": means(rows[2], rows[3]) if self.has_weights else None,
            "grad_norms": means(rows[4], rows[5]) if self.has_norms else None,
            "cosines": None,
            "nonfinite_steps": self.nonfinite,
        }
        if self.has_cos:
            cos: dict[str, float | None] = {}
            for i in range(T):
                for j in range(i + 1, T):
                    k = i * T + j
                    cos[f"{names[i]}~{names[j]}"] = (
                        cos_sum[k] / cos_count[k] if cos_count[k] > 0 else None
                    )
            out["cosines"] = cos
        if self.affinity_lr is not None:
            out["affinity"] = self._affinity(names) if self.has_cos and self.has_norms else None
        return out

    def _affinity(self, names: Sequence[str]) -> dict[str, float | None]:
        """``{"i>j": mean lr·G_ij / L_j}``: how much a step on task i's gradient lowers task j's
        loss (relative), averaged over the epoch's steps with both tasks."""
        s, c = self.aff_sum.cpu().tolist(), self.aff_count.cpu().tolist()
        return {
            f"{a}>{b}": (s[i][j] / c[i][j] if c[i][j] > 0 else None)
            for i, a in enumerate(names)
            for j, b in enumerate(names)
            if i != j
        }
