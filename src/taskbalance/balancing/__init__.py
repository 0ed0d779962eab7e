"""Balancing: base classes, the method registry and the Balancer."""

from .balancer import Balancer, StepInfo
from .base import GradientMethod, LossMethod, Method
from .registry import MethodInfo, available_methods, create, method_info, register

__all__ = [
    "Balancer",
    "GradientMethod",
    "LossMethod",
    "Method",
    "MethodInfo",
    "StepInfo",
    "available_methods",
    "create",
    "method_info",
    "register",
]
