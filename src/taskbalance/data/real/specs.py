"""The real datasets of the registry: NYUv2, Cityscapes (preprocessed ``.npy`` layout of MTAN /
LibMTL / Nash-MTL) and Kaggle Fingers, with their tasks, default models and expected layouts.

Adding a dataset: write its reader, then either append its :class:`DatasetSpec` to
:data:`BUILTIN_DATASETS` or call :func:`taskbalance.data.register_dataset` with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskbalance.data.real.celeba import CELEBA_ATTRIBUTES
from taskbalance.data.source import DOCS_PAGE, DatasetSpec

__all__ = ["BUILTIN_DATASETS", "CELEBA", "CITYSCAPES", "FINGERS", "MULTIMNIST", "NYUV2"]

#: MTAN's SegNet (Liu et al., CVPR 2019): 5 stages of 2-2-3-3-3 convolutions, 64 channels first.
SEGNET_OPTIONS: dict[str, Any] = {
    "width": 64,
    "depth": 5,
    "convs_per_stage": None,
    "architecture": "segnet",
}
ARCHITECTURES = ("segnet", "mtan")


def _segnet_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    from taskbalance.data.benchmark import check_options

    opts = check_options(options, SEGNET_OPTIONS, what)
    if opts["architecture"] not in ARCHITECTURES:
        raise ValueError(
            f"{what}: model option 'architecture' must be one of {ARCHITECTURES} (hard sharing "
            f"of the SegNet, or MTAN's attention on it), got {opts['architecture']!r}"
        )
    if opts["convs_per_stage"] is None:  # MTAN's 2-2-3-3-3 at depth 5, else two per stage
        opts["convs_per_stage"] = (2, 2, 3, 3, 3) if opts["depth"] == 5 else 2
    return opts


def _scale_crop_flip(options: dict[str, Any], normals: bool) -> Any:
    """Option ``augment``: CAGrad's / Nash-MTL's random scale-crop and flip of the training
    split (:class:`~taskbalance.data.augment.ScaleCropFlip`), or ``None``."""
    augment = options.get("augment", False)
    if not isinstance(augment, bool):
        raise ValueError(f"dataset option 'augment' must be true or false, got {augment!r}")
    if not augment:
        return None
    from taskbalance.data.augment import ScaleCropFlip

    kinds = {"segmentation": "label", "depth": "depth"}
    if normals:
        kinds["normals"] = "normal"
    return ScaleCropFlip(kinds)


# ---------------------------------------------------------------------------------- NYUv2
def _read_nyuv2(root: Path, folder: str, options: dict[str, Any]) -> Any:
    from taskbalance.data.real.nyuv2 import NYUv2

    return NYUv2(root, folder)


def _nyuv2_tasks(options: dict[str, Any]) -> list[Any]:
    from taskbalance.data.real.nyuv2 import IGNORE_INDEX, NYUV2_CLASSES
    from taskbalance.tasks import depth_task, normal_task, segmentation_task

    return [
        segmentation_task("segmentation", NYUV2_CLASSES, ignore_index=IGNORE_INDEX),
        depth_task("depth"),
        normal_task("normals"),
    ]


def _nyuv2_model(options: dict[str, Any], model_options: dict[str, Any]) -> Any:
    from taskbalance.data._models import segnet_dense
    from taskbalance.data.real.nyuv2 import NYUV2_CLASSES

    return segnet_dense(
        3,
        {"segmentation": NYUV2_CLASSES, "depth": 1, "normals": 3},
        normalize=("normals",),
        **_segnet_options(model_options, "nyuv2.build_model"),
    )


NYUV2 = DatasetSpec(
    name="nyuv2",
    description="NYUv2, 13 classes + depth + surface normals (MTAN's preprocessed .npy files)",
    task_names=("segmentation", "depth", "normals"),
    folders={"train": "train", "test": "val"},
    read=_read_nyuv2,
    make_tasks=_nyuv2_tasks,
    make_model=_nyuv2_model,
    layout=(
        "<root>/train/ (795 samples) and <root>/val/ (654, the test split), each with "
        "image/<i>.npy (float H x W x 3, values in [0, 1]), label/<i>.npy (float H x W, classes "
        "0..12, -1 = ignored pixel), depth/<i>.npy (float H x W x 1, 0 = no measurement) and "
        "normal/<i>.npy (float H x W x 3), i = 0, 1, 2, ...; H x W = 288 x 384 in the release"
    ),
    options={"augment": False},
    docs=f"{DOCS_PAGE}#nyuv2",
    train_transform=lambda options: _scale_crop_flip(options, normals=True),
)


# ---------------------------------------------------------------------------------- Cityscapes
def _cityscapes_classes(options: dict[str, Any]) -> int:
    from taskbalance.data.real.nyuv2 import CITYSCAPES_CLASSES

    classes = options.get("num_classes")
    if classes not in CITYSCAPES_CLASSES:
        raise ValueError(
            f"dataset option 'num_classes' of cityscapes must be 2, 7 or 19, got {classes!r}"
        )
    return int(classes)


def _read_cityscapes(root: Path, folder: str, options: dict[str, Any]) -> Any:
    from taskbalance.data.real.nyuv2 import Cityscapes

    return Cityscapes(root, folder, num_classes=options["num_classes"])


def _cityscapes_tasks(options: dict[str, Any]) -> list[Any]:
    from taskbalance.data.real.nyuv2 import IGNORE_INDEX
    from taskbalance.tasks import depth_task, segmentation_task

    return [
        segmentation_task("segmentation", _cityscapes_classes(options), ignore_index=IGNORE_INDEX),
        depth_task("depth"),
    ]


def _cityscapes_model(options: dict[str, Any], model_options: dict[str, Any]) -> Any:
    from taskbalance.data._models import segnet_dense

    return segnet_dense(
        3,
        {"segmentation": options["num_classes"], "depth": 1},
        **_segnet_options(model_options, "cityscapes.build_model"),
    )


CITYSCAPES = DatasetSpec(
    name="cityscapes",
    description="Cityscapes, 7 (or 19 or 2) classes + depth (MTAN's preprocessed .npy files)",
    task_names=("segmentation", "depth"),
    folders={"train": "train", "test": "val"},
    read=_read_cityscapes,
    make_tasks=_cityscapes_tasks,
    make_model=_cityscapes_model,
    layout=(
        "<root>/train/ (2975 samples) and <root>/val/ (500, the test split), each with "
        "image/<i>.npy (float H x W x 3, values in [0, 1]), label_7/<i>.npy (or label/ in "
        "LibMTL's copy; label_19/ with num_classes=19, label_2/ with 2; float H x W, classes "
        "0..num_classes-1, -1 = ignored pixel) and depth/<i>.npy (float H x W x 1, inverse "
        "depth, 0 = no measurement), i = 0, 1, 2, ...; H x W = 128 x 256 in the release"
    ),
    options={"num_classes": 7, "augment": False},
    check_options=_cityscapes_classes,
    docs=f"{DOCS_PAGE}#cityscapes",
    train_transform=lambda options: _scale_crop_flip(options, normals=False),
)


# ---------------------------------------------------------------------------------- Fingers
def _read_fingers(root: Path, folder: str, options: dict[str, Any]) -> Any:
    from taskbalance.data.real.fingers import Fingers

    return Fingers(root, folder, image_size=options["image_size"])


def _fingers_tasks(options: dict[str, Any]) -> list[Any]:
    from taskbalance.data.real.fingers import HANDS, MAX_COUNT
    from taskbalance.tasks import classification_task

    return [classification_task("count", MAX_COUNT + 1), classification_task("hand", len(HANDS))]


def _fingers_model(options: dict[str, Any], model_options: dict[str, Any]) -> Any:
    from taskbalance.data._models import small_cnn_classifier
    from taskbalance.data.benchmark import check_options
    from taskbalance.data.real.fingers import HANDS, MAX_COUNT

    opts = check_options(model_options, {"width": 32, "hidden": 64}, "fingers.build_model")
    size = options["image_size"] or 128
    heads = {"count": MAX_COUNT + 1, "hand": len(HANDS)}
    return small_cnn_classifier(1, (size, size), heads, **opts)


FINGERS = DatasetSpec(
    name="fingers",
    description="Kaggle Fingers: count raised fingers (0-5) and tell left from right hand",
    task_names=("count", "hand"),
    folders={"train": "train", "test": "test"},
    read=_read_fingers,
    make_tasks=_fingers_tasks,
    make_model=_fingers_model,
    layout=(
        "<root>/train/ and <root>/test/ holding grayscale PNG images (128 x 128 in the release) "
        "named <id>_<count><L|R>.png, count 0..5, L = left hand, R = right hand "
        "(e.g. 000e7aa6_3L.png)"
    ),
    options={"image_size": None},
    docs=f"{DOCS_PAGE}#fingers",
)


# ---------------------------------------------------------------------------------- CelebA
def _read_celeba(root: Path, folder: str, options: dict[str, Any]) -> Any:
    from taskbalance.data.real.celeba import CelebA

    return CelebA(root, folder, image_size=options["image_size"])


def _celeba_tasks(options: dict[str, Any]) -> list[Any]:
    from taskbalance.tasks import classification_task

    return [classification_task(name, 2) for name in CELEBA_ATTRIBUTES]


def _celeba_model(options: dict[str, Any], model_options: dict[str, Any]) -> Any:
    from taskbalance.data.benchmark import check_options
    from taskbalance.models.resnet import celeba_resnet18

    opts = check_options(model_options, {"pool": 2}, "celeba.build_model")
    return celeba_resnet18(CELEBA_ATTRIBUTES, **opts)


CELEBA = DatasetSpec(
    name="celeba",
    description="CelebA: 40 binary face attributes (Sener & Koltun's multi-task setting)",
    task_names=CELEBA_ATTRIBUTES,
    folders={"train": "train", "val": "val", "test": "test"},
    read=_read_celeba,
    make_tasks=_celeba_tasks,
    make_model=_celeba_model,
    layout=(
        "<root>/img_align_celeba/<name>.jpg (the aligned 178 x 218 JPEGs), "
        "<root>/list_attr_celeba.txt (line 1: image count; line 2: the 40 attribute names; then "
        "'<name>.jpg' and 40 values -1/1 per line) and <root>/list_eval_partition.txt "
        "('<name>.jpg 0|1|2' per line: train, val, test)"
    ),
    options={"image_size": 64},
    docs=f"{DOCS_PAGE}#celeba",
)


# ---------------------------------------------------------------------------------- MultiMNIST
def _read_multimnist(root: Path, folder: str, options: dict[str, Any]) -> Any:
    from taskbalance.data.real.multimnist import load_multimnist

    splits = load_multimnist(root, seed=options["pair_seed"], val_size=options["val_size"])
    return splits[folder]


def _multimnist_tasks(options: dict[str, Any]) -> list[Any]:
    from taskbalance.tasks import classification_task

    return [classification_task("left", 10), classification_task("right", 10)]


def _multimnist_model(options: dict[str, Any], model_options: dict[str, Any]) -> Any:
    from taskbalance.data.benchmark import check_options
    from taskbalance.models.lenet import lenet_multimnist

    opts = check_options(model_options, {"dropout": 0.5}, "multimnist.build_model")
    return lenet_multimnist(**opts)


MULTIMNIST = DatasetSpec(
    name="multimnist",
    description="MultiMNIST: two overlaid MNIST digits (Sener & Koltun), left and right digit",
    task_names=("left", "right"),
    folders={"train": "train", "val": "val", "test": "test"},
    read=_read_multimnist,
    make_tasks=_multimnist_tasks,
    make_model=_multimnist_model,
    layout=(
        "<root>/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (MNIST's idx files, optionally gzipped: N x 28 x 28 uint8 "
        "images, N uint8 labels 0..9); pairs are generated from option pair_seed and cached"
    ),
    options={"val_size": 10_000, "pair_seed": 0},
    docs=f"{DOCS_PAGE}#multimnist",
)

BUILTIN_DATASETS: list[DatasetSpec] = [NYUV2, CITYSCAPES, FINGERS, CELEBA, MULTIMNIST]
