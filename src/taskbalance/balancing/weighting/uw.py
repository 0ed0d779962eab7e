"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from taskbalance.validation import is_int

from ..base import LossMethod, check_choice, check_positive, present_mask
from ..registry import register


def _classification_mask(tasks: Sequence[int] | Sequence[bool] | Tensor | None, num_tasks: int):
    """``classification_tasks`` (indices or one bool per task) as a list of bools."""
    if tasks is None:
        return [False] * num_tasks
    values = tasks.tolist() if isinstance(tasks, Tensor) else list(tasks)
    if values and all(isinstance(v, bool) for v in values):
        if len(values) != num_tasks:
            raise ValueError(
                f"classification_tasks given as booleans needs one per task ({num_tasks}), "
                f"got {len(values)}: {values}"
            )
        return values
    if not all(is_int(v) for v in values):
        raise ValueError(
            f"classification_tasks must be task indices or one bool per task, got {values!r}"
        )
    mask = [False] * num_tasks
    for i in values:
        if not 0 <= i < num_tasks:
            raise ValueError(
                f"classification_tasks index {i} is out of range for {num_tasks} tasks"
            )
        mask[i] = True
    return mask


@register(
    "uw",
    paper="Kendall, Gal & Cipolla, Multi-task learning using uncertainty to weigh losses for "
    "scene geometry and semantics, CVPR 2018, https://arxiv.org/abs/1705.07115",
)
class UncertaintyWeighting(LossMethod):
    """Uncertainty weighting: learnable homoscedastic task uncertainties weigh the losses.

    ``form="log_variance"`` (default) learns ``s_t = log σ_t²`` (initialised at 0)::

        Σ_t c_t·e^{-s_t}·L_t + ½·s_t,   c_t = ½ (regression), 1 (``classification_tasks``)

    which is the paper's Gaussian negative log-likelihood (``1/(2σ²)·L + log σ``) and, for tasks
    with a softmax likelihood, its approximation ``1/σ²·L + log σ``. Learning ``log σ²`` instead
    of ``σ`` keeps the loss defined for any parameter value (paper, Sec. 3.2).

    ``form="sigma"`` learns ``σ_t`` (initialised at 1): ``Σ_t L_t/(σ_t² + ε) + Σ_t log(σ_t + ε)``;
    ``form="sigma_product"``: ``Σ_t L_t/(σ_t² + ε) + log(Π_t σ_t + ε)`` (the product over the
    tasks present). σ enters through ``|σ|``, so the loss stays defined if an optimizer step
    overshoots below zero.

    Effective weights (``last_weights``): the multipliers of ``L_t`` (``c_t·e^{-s_t}`` or
    ``1/(σ_t² + ε)``). Give ``balancer.parameters()`` to the optimizer so they are learned.

    Args:
        form: ``"log_variance"``, ``"sigma"`` or ``"sigma_product"``.
        classification_tasks: tasks whose factor ½ becomes 1 (indices, or one bool per task);
            ``form="log_variance"`` only.
        eps: ``ε`` of the σ forms.

    Paper: https://arxiv.org/abs/1705.07115
    """

    factors: Tensor

    def __init__(
        self,
        num_tasks: int,
        form: str = "log_variance",
        classification_tasks: Sequence[int] | Sequence[bool] | Tensor | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(num_tasks)
        self.form = check_choice("form", form, ("log_variance", "sigma", "sigma_product"))
        self.eps = check_positive("eps", eps)
        mask = _classification_mask(classification_tasks, num_tasks)
        if any(mask) and self.form != "log_variance":
            raise ValueError(
                f"classification_tasks only applies to form='log_variance', got form={form!r}"
            )
        self.register_buffer(
            "factors", torch.tensor([1.0 if c else 0.5 for c in mask], dtype=torch.float64)
        )
        if self.form == "log_variance":
            self.log_vars = nn.Parameter(torch.zeros(num_tasks))
        else:
            self.sigmas = nn.Parameter(torch.ones(num_tasks))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            if self.form == "log_variance":
                self.log_vars.zero_()
            else:
                self.sigmas.fill_(1.0)

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        p = present_mask(losses, present)
        if self.form == "log_variance":
            s = self.log_vars.to(losses)
            w = self.factors.to(losses) * torch.exp(-s)
            terms = w * losses + 0.5 * s
        else:
            sigma = self.sigmas.to(losses).abs()
            w = 1.0 / (sigma * sigma + self.eps)
            if self.form == "sigma":
                terms = w * losses + torch.log(sigma + self.eps)
            else:
                # log(Π σ + ε) over the present tasks, shared equally among their terms so the
                # base class's sum over present terms is exactly the regulariser.
                pf = p.to(losses.dtype)
                reg = torch.log(torch.where(p, sigma, 1.0).prod() + self.eps)
                terms = w * losses + reg * pf / pf.sum()
        self.last_weights = torch.where(p, w.detach(), 0.0)
        return terms

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, form={self.form!r}"
