"""The in-memory multi-task dataset every built-in benchmark and partial-label view uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Batch", "MultiTaskDataset"]

#: One dataset item: ``(inputs, targets, masks)``.
Batch = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]


class MultiTaskDataset(Dataset):
    """An in-memory multi-task dataset yielding ``(inputs, targets, masks)`` items.

    Args:
        inputs: ``[N, ...]`` tensor; ``uint8`` inputs are returned as float32 divided by 255.
        targets: task name -> ``[N, ...]`` tensor of targets.
        masks: task name -> ``[N]`` bool tensor, ``True`` where the sample carries the label.
            Missing entries (or ``None``) mean "every sample labelled".
        extras: optional per-sample numpy arrays that are not training targets (ground-truth
            metadata such as full trajectories), kept for inspection and tests.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        n = int(inputs.shape[0])
        self.inputs = inputs
        self.targets: dict[str, torch.Tensor] = dict(targets)
        masks = dict(masks or {})
        for name, target in self.targets.items():
            if int(target.shape[0]) != n:
                raise ValueError(
                    f"target {name!r} has {int(target.shape[0])} samples, inputs have {n}"
                )
            mask = masks.get(name)
            if mask is None:
                mask = torch.ones(n, dtype=torch.bool)
            if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
                raise ValueError(f"mask of task {name!r} must be a bool tensor of shape ({n},)")
            masks[name] = mask
        unknown = set(masks) - set(self.targets)
        if unknown:
            raise ValueError(f"masks given for unknown tasks {sorted(unknown)}")
        self.masks: dict[str, torch.Tensor] = masks
        self.extras: dict[str, np.ndarray] = dict(extras or {})

    @property
    def task_names(self) -> list[str]:
        """Names of the tasks, in order."""
        return list(self.targets)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, index: int | list[int] | torch.Tensor) -> Batch:
        # A list (or tensor) of indices gives the whole batch at once (see data/loading.py).
        x = self.inputs[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        targets = {name: t[index] for name, t in self.targets.items()}
        masks = {name: m[index] for name, m in self.masks.items()}
        return x, targets, masks

    def label_fractions(self) -> dict[str, float]:
        """Fraction of samples labelled, per task."""
        return {name: float(m.float().mean()) if len(m) else 0.0 for name, m in self.masks.items()}

    def with_masks(self, masks: Mapping[str, torch.Tensor]) -> MultiTaskDataset:
        """A copy whose masks are replaced where given; unlabelled targets become zeros."""
        new_masks = dict(self.masks)
        new_targets = dict(self.targets)
        for name, mask in masks.items():
            if name not in self.targets:
                raise ValueError(f"unknown task {name!r}; tasks are {self.task_names}")
            new_masks[name] = mask
            keep = mask.view(-1, *([1] * (self.targets[name].dim() - 1)))
            new_targets[name] = torch.where(keep, self.targets[name], 0)
        return MultiTaskDataset(self.inputs, new_targets, new_masks, self.extras)
