"""What one balancing step did (:class:`StepInfo`) and the loss inputs it accepts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["Features", "LossInput", "StepInfo"]

LossInput = Mapping[str, Tensor | None] | Sequence[Tensor | None] | Tensor
#: The shared features (one tensor or several), or per task the view of them its head consumed.
Features = Tensor | Sequence[Tensor] | Mapping[str, Tensor | Sequence[Tensor]]


@dataclass
class StepInfo:
    """What one balancing step did; tensors are detached and stay on the device."""

    task_names: tuple[str, ...]
    losses: Tensor  # raw task losses [T]; 0 for absent tasks
    present: Tensor  # bool [T]: tasks with a loss this step
    weights: Tensor | None = None  # effective task weights [T] (0 for absent tasks)
    grad_norms: Tensor | None = None  # ‖g_t‖ [T] when per-task gradients were computed
    cosines: Tensor | None = None  # cos(g_i, g_j) [T, T] when per-task gradients were computed
    extras: dict[str, Tensor] = field(default_factory=dict)
    #: True when the step was skipped (``nonfinite="skip"``): no shared gradient was written.
    skipped: bool = False

    def to_dict(self) -> dict[str, object]:
        """Plain numbers for logging (synchronises with the device: call off the hot path)."""
        out: dict[str, object] = {}
        names = self.task_names
        present = self.present.tolist()
        for i, n in enumerate(names):
            if present[i]:
                out[f"loss/{n}"] = float(self.losses[i])
            if self.weights is not None:
                out[f"weight/{n}"] = float(self.weights[i])
            if self.grad_norms is not None:
                out[f"grad_norm/{n}"] = float(self.grad_norms[i])
        if self.cosines is not None:
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    out[f"cos/{names[i]}~{names[j]}"] = float(self.cosines[i, j])
        return out
