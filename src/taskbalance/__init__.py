"""taskbalance: train multi-task networks with every established way of balancing tasks."""

from .balancing import (
    Balancer,
    GradientMethod,
    LossMethod,
    Method,
    StepInfo,
    available_methods,
    create,
    method_info,
)
from .tasks import Task, delta_m

__version__ = "0.1.0"

__all__ = [
    "Balancer",
    "GradientMethod",
    "LossMethod",
    "Method",
    "StepInfo",
    "Task",
    "__version__",
    "available_methods",
    "create",
    "delta_m",
    "method_info",
]
