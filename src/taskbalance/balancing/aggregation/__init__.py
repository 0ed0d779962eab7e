"""Gradient-aggregation methods: each module registers one method."""

from . import aligned_mtl, cagrad, graddrop, gradvac, imtl, mgda, nash_mtl, pcgrad, upgrad

__all__ = [
    "aligned_mtl",
    "cagrad",
    "graddrop",
    "gradvac",
    "imtl",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "upgrad",
]
