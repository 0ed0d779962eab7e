"""Loss-weighting methods: each module registers one method."""

from . import ew, static

__all__ = ["ew", "static"]
