"""Recipes: the published training protocols, each set in one place (``--recipe NAME``).

A recipe is a set of :class:`~taskbalance.training.TrainConfig` values (dataset, model,
optimizer, schedule, epochs, batch size, augmentation, how the final number is taken) plus the
seeds to run, the paper and table it follows, and a few published numbers to print beside ours.
:func:`recipe_config` applies one: explicit values (command-line flags, a config file) override
the recipe's, option dicts (``model_options``, ``dataset_options``, ...) key by key.

The defaults assume a GPU: unless a device is given, a recipe runs on ``device: auto`` (CUDA,
then MPS, then the CPU); every recipe also runs on the CPU with ``--steps 1`` for a smoke test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskbalance.validation import registered

__all__ = [
    "RECIPES",
    "PublishedRow",
    "Recipe",
    "available_recipes",
    "get_recipe",
    "recipe_config",
]

#: Config keys whose values are option dicts: an explicit value updates the recipe's key by key.
_MERGED_KEYS = ("model_options", "dataset_options", "optimizer_options", "scheduler_options")


@dataclass(frozen=True)
class PublishedRow:
    """Published test numbers of one method under a recipe's protocol.

    Attributes:
        method: our method name (``"ew"``, ``"nash_mtl"``, ...).
        label: the row's name in the paper (``"LS"``, ``"Nash-MTL"``).
        metrics: ``{task: {metric: value}}`` in taskbalance's names and units (fractions, not
            percentages); only the cells that were checked are stored.
        source: paper and table.
        checked: where the numbers were read (so a reader can tell how far to trust them).
    """

    method: str
    label: str
    metrics: Mapping[str, Mapping[str, float]]
    source: str
    checked: str


@dataclass(frozen=True)
class Recipe:
    """A published protocol (see the module docstring).

    Attributes:
        name: ``--recipe`` name.
        dataset: the registered dataset it trains on.
        model: the architecture, in words.
        config: the TrainConfig values it sets.
        seeds: the seeds a comparison runs (when none are given).
        source: paper and table (or section) it follows; ``code``: the reference code read for
            the settings the paper does not state.
        notes: where we differ from the reference, and why.
        published: published rows to print beside ours.
    """

    name: str
    dataset: str
    model: str
    config: Mapping[str, Any]
    seeds: tuple[int, ...]
    source: str
    code: str
    notes: tuple[str, ...] = ()
    published: tuple[PublishedRow, ...] = field(default_factory=tuple)

    @property
    def final(self) -> str:
        """How the final number is taken, in words."""
        k = self.config.get("final_epochs")
        if k:
            return f"mean of the last {k} epochs' test metrics"
        return "test metrics at the best validation epoch"

    def summary(self) -> str:
        """One line: optimizer, lr, schedule, epochs, batch, augmentation, final number."""
        c = self.config
        schedule = c.get("scheduler", "none")
        if schedule == "step":
            opts = c.get("scheduler_options", {})
            schedule = f"x{opts.get('gamma')} every {opts.get('step_size')} epochs"
        augment = "scale-crop-flip" if c.get("dataset_options", {}).get("augment") else "none"
        return (
            f"{c['optimizer']} lr {c['lr']:g}, lr {schedule}, {c['epochs']} epochs, batch "
            f"{c['batch_size']}, augmentation {augment}, {self.final}, seeds "
            f"{','.join(map(str, self.seeds))}"
        )


_MTAN_CODE = (
    "https://github.com/Cranial-XIX/CAGrad and https://github.com/AvivNavon/nash-mtl "
    "(experiments/nyuv2/trainer.py, data.py; cityscapes/model_segnet_mtan.py, create_dataset.py)"
)
_MTAN_NOTES = (
    "taskbalance computes depth and normal metrics over the whole test set; the reference code "
    "averages them over test batches (batch 2 for NYUv2) without weights (about 1% apart on "
    "random predictions; DESIGN.md 'Metric protocols')",
    "the published tables report angle thresholds in percent; taskbalance in fractions",
)
_SENER_KOLTUN_CODE = (
    "https://github.com/isl-org/MultiObjectiveOptimization (sample.json, train_multi_task.py, "
    "models/multi_faces_resnet.py, models/multi_lenet.py, loaders/multi_mnist_loader.py)"
)
_REPRINT = (
    "read from Tables 2 (Cityscapes) and 3 (NYUv2) of the IMGrad paper's text, which reprints "
    "the rows of Navon et al. 2022 and of the MoCo (Fernando et al., ICLR 2023) and FAMO (Liu et "
    "al., NeurIPS 2023) papers; the NYUv2 depth errors are rounded to 2 decimals there; Nash-MTL's "
    "mIoU (40.13 / 75.41) also matches the paper's Papers with Code entry"
)
_ORIGIN = {
    "MoCo": "Fernando et al., ICLR 2023",
    "FAMO": "Liu et al., NeurIPS 2023",
}
_METHODS = {
    "LS": "ew", "RLW": "rlw", "DWA": "dwa", "MGDA": "mgda", "GradDrop": "graddrop",
    "PCGrad": "pcgrad", "CAGrad": "cagrad", "Nash-MTL": "nash_mtl", "MoCo": "moco", "FAMO": "famo",
}  # fmt: skip
# NYUv2, MTAN, 200 epochs, mean of the last 10 (percent as printed): mIoU, pixel acc, abs err,
# rel err, mean angle, median angle, within 11.25, 22.5, 30
_NYUV2_TABLE = {
    "LS": (39.29, 65.33, 0.55, 0.23, 28.15, 23.96, 22.09, 47.50, 61.08),
    "RLW": (37.17, 63.77, 0.58, 0.24, 28.27, 24.18, 22.26, 47.05, 60.62),
    "DWA": (39.11, 65.31, 0.55, 0.23, 27.61, 23.18, 24.17, 50.18, 62.39),
    "MGDA": (30.47, 59.90, 0.61, 0.26, 24.88, 19.45, 29.18, 56.88, 69.36),
    "GradDrop": (39.39, 65.12, 0.55, 0.23, 27.48, 22.96, 23.38, 49.44, 62.87),
    "PCGrad": (38.06, 64.64, 0.56, 0.23, 27.41, 22.80, 23.86, 49.83, 63.14),
    "CAGrad": (39.79, 65.49, 0.55, 0.23, 26.31, 21.58, 25.61, 52.36, 65.58),
    "Nash-MTL": (40.13, 65.93, 0.53, 0.22, 25.26, 20.08, 28.40, 55.47, 68.15),
    "MoCo": (40.30, 66.07, 0.56, 0.21, 26.67, 21.83, 25.61, 51.78, 64.85),
    "FAMO": (38.88, 64.90, 0.55, 0.22, 25.06, 19.57, 29.21, 56.61, 68.98),
}
# Cityscapes (7 classes), MTAN: mIoU, pixel acc (percent), depth abs err
_CITYSCAPES_TABLE = {
    "LS": (75.18, 93.49, 0.0155),
    "RLW": (74.57, 93.41, 0.0158),
    "DWA": (75.24, 93.52, 0.0160),
    "MGDA": (68.84, 91.54, 0.0309),
    "GradDrop": (75.27, 93.53, 0.0157),
    "PCGrad": (75.13, 93.48, 0.0154),
    "CAGrad": (75.16, 93.48, 0.0141),
    "Nash-MTL": (75.41, 93.66, 0.0129),
    "MoCo": (75.42, 93.55, 0.0149),
    "FAMO": (74.54, 93.29, 0.0145),
}


def _nyuv2_metrics(v: tuple[float, ...]) -> dict[str, dict[str, float]]:
    pct = [round(x / 100, 6) for x in v]
    return {
        "segmentation": {"miou": pct[0], "pixel_acc": pct[1]},
        "depth": {"abs_err": v[2], "rel_err": v[3]},
        "normals": {"mean_angle": v[4], "median_angle": v[5], "within_11.25": pct[6],
                    "within_22.5": pct[7], "within_30": pct[8]},
    }  # fmt: skip


def _cityscapes_metrics(v: tuple[float, ...]) -> dict[str, dict[str, float]]:
    return {
        "segmentation": {"miou": round(v[0] / 100, 6), "pixel_acc": round(v[1] / 100, 6)},
        "depth": {"abs_err": v[2]},
    }


def _published(table: Mapping[str, tuple[float, ...]], to_metrics: Any, paper_table: str) -> tuple:
    """One :class:`PublishedRow` per printed row (values converted to our names and units)."""
    return tuple(
        PublishedRow(
            method=_METHODS[label],
            label=label,
            metrics=to_metrics(values),
            source=_ORIGIN.get(label, f"Navon et al., ICML 2022, {paper_table}"),
            checked=_REPRINT,
        )
        for label, values in table.items()
    )


def _mtan_config(dataset: str, *, batch_size: int, **dataset_options: Any) -> dict[str, Any]:
    """The MTAN protocol of the NYUv2 and Cityscapes tables (CAGrad / Nash-MTL code): SegNet-MTAN,
    Adam 1e-4 halved at epoch 100, 200 epochs, scale-crop-flip, the test split as validation,
    mean of the last 10 epochs."""
    return {
        "dataset": dataset,
        "dataset_options": {"val_fraction": 0, "augment": True, **dataset_options},
        "model_options": {"architecture": "mtan"},
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "scheduler": "step",
        "scheduler_options": {"step_size": 100, "gamma": 0.5},
        "epochs": 200,
        "batch_size": batch_size,
        "eval_batch_size": batch_size,
        "final_epochs": 10,
    }


RECIPES: dict[str, Recipe] = {
    "nyuv2-mtan": Recipe(
        name="nyuv2-mtan",
        dataset="nyuv2",
        model="MTAN on MTAN's SegNet (64-128-256-512-512, 2-2-3-3-3 convs), dense heads",
        config=_mtan_config("nyuv2", batch_size=2),
        seeds=(0, 1, 2),
        source="Navon et al., 'Multi-Task Learning as a Bargaining Game', ICML 2022, Table 2 "
        "(protocol of Liu et al., CVPR 2019, with CAGrad's augmentation)",
        code=_MTAN_CODE,
        notes=_MTAN_NOTES + ("validation = the test split, as in the reference code",),
        published=_published(_NYUV2_TABLE, _nyuv2_metrics, "Table 2"),
    ),
    "cityscapes-mtan": Recipe(
        name="cityscapes-mtan",
        dataset="cityscapes",
        model="MTAN on MTAN's SegNet, dense heads; 7 classes + depth at 128 x 256",
        config=_mtan_config("cityscapes", batch_size=8, num_classes=7),
        seeds=(0, 1, 2),
        source="Navon et al., ICML 2022, Table 3 (Cityscapes protocol of CAGrad, Liu et al., "
        "NeurIPS 2021)",
        code=_MTAN_CODE,
        notes=_MTAN_NOTES[:1] + ("validation = the test split, as in the reference code",),
        published=_published(_CITYSCAPES_TABLE, _cityscapes_metrics, "Table 3"),
    ),
    "celeba-resnet18": Recipe(
        name="celeba-resnet18",
        dataset="celeba",
        model="ResNet-18 (3x3 stem, no max-pool) shared, 2x2 average pool, 40 linear heads",
        config={
            "dataset": "celeba",
            "dataset_options": {"image_size": 64},
            "model_options": {},
            "optimizer": "adam",
            "lr": 5e-4,
            "weight_decay": 0.0,
            "scheduler": "step",
            "scheduler_options": {"step_size": 10, "gamma": 0.85},
            "epochs": 100,
            "batch_size": 256,
        },
        seeds=(0,),
        source="Sener & Koltun, 'Multi-Task Learning as Multi-Objective Optimization', "
        "NeurIPS 2018, CelebA experiment (Sec. 6)",
        code=_SENER_KOLTUN_CODE,
        notes=(
            "images are scaled to [0, 1]; the reference code subtracts a per-channel mean",
            "lr x0.85 every 10 epochs and 100 epochs: train_multi_task.py; Adam 5e-4, batch "
            "256: the repository's sample.json (its CelebA configuration)",
        ),
    ),
    "multimnist-lenet": Recipe(
        name="multimnist-lenet",
        dataset="multimnist",
        model="LeNet (2 conv + fc 50) shared, two heads fc 50-50-10 (Sener & Koltun)",
        config={
            "dataset": "multimnist",
            "dataset_options": {"val_size": 10_000},
            "model_options": {},
            "optimizer": "adam",
            "lr": 5e-4,
            "weight_decay": 0.0,
            "scheduler": "step",
            "scheduler_options": {"step_size": 10, "gamma": 0.85},
            "epochs": 100,
            "batch_size": 256,
            "eval_batch_size": 100,
        },
        seeds=(0,),
        source="Sener & Koltun, NeurIPS 2018, MultiMNIST experiment (Sec. 6)",
        code=_SENER_KOLTUN_CODE,
        notes=(
            "the reference code has no validation split (it validates on test); here the last "
            "10,000 MNIST training images build the validation set",
            "Adam 5e-4 and batch 256 come from the repository's sample configuration, which it "
            "gives for CelebA; the MultiMNIST values are not in the code",
            "inputs are in [0, 1]; the reference code normalises with MNIST's mean and std",
        ),
    ),
}


def available_recipes() -> list[str]:
    """The recipe names, sorted."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; ``ValueError`` naming the valid ones (and the closest) otherwise."""
    return registered(RECIPES, name, "recipe", " (list them with `taskbalance recipes`)")


def recipe_config(name: str, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TrainConfig values of recipe ``name`` with ``explicit`` values on top.

    ``explicit`` holds what the user set (flags, a config file): a plain key replaces the
    recipe's value; an option dict (``model_options``, ``dataset_options``,
    ``optimizer_options``, ``scheduler_options``) updates the recipe's dict key by key. The
    device is ``"auto"`` unless given.

    Raises:
        ValueError: unknown recipe, or an explicit ``dataset`` other than the recipe's.
    """
    recipe = get_recipe(name)
    data: dict[str, Any] = {
        k: dict(v) if isinstance(v, Mapping) else v for k, v in recipe.config.items()
    }
    given = dict(explicit or {})
    if given.get("dataset", recipe.dataset) != recipe.dataset:
        raise ValueError(
            f"recipe {name!r} trains on dataset {recipe.dataset!r}, but dataset "
            f"{given['dataset']!r} was given; drop --dataset (the recipe sets it) or the recipe"
        )
    data["device"] = "auto"  # CUDA, then MPS, then the CPU (training.devices.auto_device)
    for key, value in given.items():
        if key in _MERGED_KEYS and isinstance(value, Mapping):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return data
