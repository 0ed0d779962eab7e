"""Multi-task architectures: hard sharing with a branch point, cross-stitch networks, MTAN, the
mixture-of-experts family (MMoE, CGC, PLE, DSelect-K), learning to branch, backbones, task heads,
and what sharing saves."""

from taskbalance.models import experts
from taskbalance.models.backbones import (
    RESNET_NAMES,
    ConvBNReLU,
    ResNetBackbone,
    SegNetBackbone,
    SmallCNN,
    resnet_backbone,
)
from taskbalance.models.cgc import CGC
from taskbalance.models.cross_stitch import CrossStitchNetwork, CrossStitchUnit
from taskbalance.models.dselect_k import DSelectK, DSelectKGate
from taskbalance.models.heads import ClassificationHead, CoordinateHead, DenseHead, NormalHead
from taskbalance.models.lenet import LeNetHead, LeNetShared, lenet_multimnist
from taskbalance.models.ltb import LTB
from taskbalance.models.mmoe import MMoE
from taskbalance.models.mtan import MTAN, AttentionModule
from taskbalance.models.multitask import MultiTaskModel, MultiTaskNetwork, reset_parameters
from taskbalance.models.ple import PLE
from taskbalance.models.report import (
    count_parameters,
    sharing_report,
    single_task_models,
    time_forward,
)
from taskbalance.models.resnet import basic_resnet, celeba_resnet18

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
    "basic_resnet",
    "celeba_resnet18",
    "LeNetShared",
    "LeNetHead",
    "lenet_multimnist",
    "ClassificationHead",
    "DenseHead",
    "NormalHead",
    "CoordinateHead",
    "CrossStitchUnit",
    "CrossStitchNetwork",
    "AttentionModule",
    "MTAN",
    "MMoE",
    "CGC",
    "PLE",
    "DSelectK",
    "DSelectKGate",
    "LTB",
    "experts",
    "count_parameters",
    "single_task_models",
    "sharing_report",
    "time_forward",
]
