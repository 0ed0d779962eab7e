"""Loaders for real datasets already on disk (nothing is downloaded).

* :class:`NYUv2`, :class:`Cityscapes`: the preprocessed ``.npy`` layout of MTAN / Nash-MTL / LibMTL.
* :class:`Fingers`: Kaggle Fingers PNGs named ``<id>_<count><L|R>.png``.
"""

from taskbalance.data.real.fingers import HANDS, Fingers
from taskbalance.data.real.nyuv2 import IGNORE_INDEX, NYUV2_CLASSES, Cityscapes, NYUv2

__all__ = ["HANDS", "IGNORE_INDEX", "NYUV2_CLASSES", "Cityscapes", "Fingers", "NYUv2"]
