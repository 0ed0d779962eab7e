"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..base import LossMethod, check_choice, check_positive, make_generator, present_mask
from ..registry import register


def sample_log_gamma(shape: float, n: int, generator: torch.Generator | None) -> Tensor:
    """Logarithms of ``n`` draws of Gamma(``shape``, 1), float64 on the CPU, from ``generator``.

    Marsaglia & Tsang (2000) squeeze-rejection sampler; for ``shape < 1`` the boost
    ``Gamma(a) = Gamma(a + 1)·U^{1/a}``, applied in the log domain so tiny draws do not underflow.
    Written here because torch's gamma sampler takes no generator, and seeded runs must repeat
    exactly.
    """
    a = shape + 1.0 if shape < 1.0 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    tiny = torch.finfo(torch.float64).tiny
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.ones(n, dtype=torch.bool)
    while bool(todo.any()):
        k = int(todo.sum())
        x = torch.randn(k, generator=generator, dtype=torch.float64)
        u = torch.rand(k, generator=generator, dtype=torch.float64).clamp_min(tiny)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        logv = torch.log(torch.where(ok, v, 1.0))
        ok &= torch.log(u) < 0.5 * x * x + d - d * v + d * logv
        idx = todo.nonzero().flatten()[ok]
        out[idx] = math.log(d) + logv[ok]
        todo[idx] = False
    if shape < 1.0:
        u = torch.rand(n, generator=generator, dtype=torch.float64).clamp_min(tiny)
        out = out + torch.log(u) / shape
    return out


@register(
    "rlw",
    paper="Lin, Ye, Xu, Shi & Zhang, Reasonable effectiveness of random weighting: a litmus "
    "test for multi-task learning, TMLR 2022, https://arxiv.org/abs/2111.10603",
)
class RandomLossWeighting(LossMethod):
    """Random loss weighting: fresh random weights on the simplex at every step.

    ``distribution="normal"`` (default, the paper's main choice): ``w = softmax(z)``,
    ``z ~ N(0, I)``; ``distribution="dirichlet"``: ``w ~ Dir(concentration·1)`` (sampled as
    normalised Gamma draws). By default the weights sum to 1 as in the paper;
    ``scale="num_tasks"`` multiplies them by the number of tasks so they sum to ``T``, the scale
    of equal weighting. In a step where some tasks are absent the weights are drawn over the
    present tasks only (softmax / normalisation over them; with ``scale="num_tasks"`` they sum
    to the number present).

    Draws come from a CPU generator (``seed``: an int, a ``torch.Generator`` or ``None`` for
    torch's global RNG) and are then moved to the losses' device, so seeded runs repeat exactly
    on any device and dtype. One draw of ``T`` values is consumed per step whatever the tasks
    present. The generator's state travels in ``state_dict``; :meth:`reset` rewinds an int seed.

    Args:
        distribution: ``"normal"`` or ``"dirichlet"``.
        concentration: the Dirichlet concentration (> 0; 1 is uniform on the simplex).
        scale: ``"one"`` (weights sum to 1) or ``"num_tasks"``.
        seed: int, ``torch.Generator`` or ``None``.

    Paper: https://arxiv.org/abs/2111.10603
    """

    def __init__(
        self,
        num_tasks: int,
        distribution: str = "normal",
        concentration: float = 1.0,
        scale: str = "one",
        seed: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(num_tasks)
        self.distribution = check_choice("distribution", distribution, ("normal", "dirichlet"))
        self.concentration = check_positive("concentration", concentration)
        self.scale = check_choice("scale", scale, ("one", "num_tasks"))
        self._seed = seed
        self.generator = make_generator(seed)

    def reset(self) -> None:
        super().reset()
        if isinstance(self._seed, int):
            self.generator = make_generator(self._seed)

    def draw_logits(self) -> Tensor:
        """One draw ``[T]`` (float64, CPU) whose softmax is the weight vector: ``z ~ N(0, I)``, or
        the logarithms of Gamma(concentration) draws (their softmax is Dirichlet-distributed)."""
        if self.distribution == "normal":
            return torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64)
        return sample_log_gamma(self.concentration, self.num_tasks, self.generator)

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        # Draw on the CPU, normalise over the present tasks on the device (no host sync).
        logits = self.draw_logits().to(device=losses.device, dtype=losses.dtype)
        p = present_mask(losses, present)
        w = torch.softmax(torch.where(p, logits, -math.inf), 0)
        if self.scale == "num_tasks":
            w = w * p.sum()
        self.last_weights = w
        return w * losses

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, distribution={self.distribution!r}"
