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

__version__ = "0.1.0"

__all__ = [
    "Balancer",
    "GradientMethod",
    "LossMethod",
    "Method",
    "StepInfo",
    "__version__",
    "available_methods",
    "create",
    "method_info",
]
