"""Loss-weighting methods: each module registers one method."""

from . import dwa, ew, famo, gls, gradnorm, imtl_l, rlw, scaled, static, stch, uw
from .imtl_l import imtl_l_transform

__all__ = [
    "dwa",
    "ew",
    "famo",
    "gls",
    "gradnorm",
    "imtl_l",
    "imtl_l_transform",
    "rlw",
    "scaled",
    "static",
    "stch",
    "uw",
]
