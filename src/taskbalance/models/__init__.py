"""Multi-task architectures: hard sharing with a branch point, cross-stitch networks, MTAN,
backbones, task heads, and what sharing saves."""

from taskbalance.models.backbones import (
    RESNET_NAMES,
    ConvBNReLU,
    ResNetBackbone,
    SegNetBackbone,
    SmallCNN,
    resnet_backbone,
)
from taskbalance.models.cross_stitch import CrossStitchNetwork, CrossStitchUnit
from taskbalance.models.heads import ClassificationHead, CoordinateHead, DenseHead, NormalHead
from taskbalance.models.mtan import MTAN, AttentionModule
from taskbalance.models.multitask import MultiTaskModel, MultiTaskNetwork, reset_parameters
from taskbalance.models.report import (
    count_parameters,
    sharing_report,
    single_task_models,
    time_forward,
)

__all__ = [
    "MultiTaskNetwork",
    "MultiTaskModel",
    "reset_parameters",
    "ConvBNReLU",
    "SmallCNN",
    "SegNetBackbone",
    "ResNetBackbone",
    "resnet_backbone",
    "RESNET_NAMES",
    "ClassificationHead",
    "DenseHead",
    "NormalHead",
    "CoordinateHead",
    "CrossStitchUnit",
    "CrossStitchNetwork",
    "AttentionModule",
    "MTAN",
    "count_parameters",
    "single_task_models",
    "sharing_report",
    "time_forward",
]
