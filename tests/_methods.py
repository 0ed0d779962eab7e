"""Shared test helper: the options that make a registered method take one batch a step.

MoDo and SDMGrad default to ``sampling="independent"`` (three disjoint parts of the batch a
step, through ``Balancer.backward_independent``); tests that drive every method through
``Balancer.backward`` (one batch) create those two with ``sampling="single"``.
"""

from __future__ import annotations

import taskbalance as tb


def one_batch(name: str) -> dict[str, str]:
    """``{"sampling": "single"}`` for a method with a ``sampling`` option, else ``{}``."""
    return {"sampling": "single"} if "sampling" in tb.method_info(name).options else {}
