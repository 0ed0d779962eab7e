"""Loaders for real datasets already on disk (nothing is downloaded).

* :class:`NYUv2`, :class:`Cityscapes`: the preprocessed ``.npy`` layout of MTAN / Nash-MTL / LibMTL.
* :class:`Fingers`: Kaggle Fingers PNGs named ``<id>_<count><L|R>.png``.
* :class:`CelebA`: the 40 face attributes of the official release (aligned JPEGs + list files).
* :class:`MultiMNIST`: two overlaid MNIST digits built from MNIST's idx files (Sener & Koltun).
"""

from taskbalance.data.real.celeba import CelebA
from taskbalance.data.real.fingers import HANDS, Fingers
from taskbalance.data.real.multimnist import MultiMNIST
from taskbalance.data.real.nyuv2 import IGNORE_INDEX, NYUV2_CLASSES, Cityscapes, NYUv2

__all__ = [
    "HANDS",
    "IGNORE_INDEX",
    "NYUV2_CLASSES",
    "CelebA",
    "Cityscapes",
    "Fingers",
    "MultiMNIST",
    "NYUv2",
]
