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
from dataclasses import dataclass
from typing import Any

from taskbalance.validation import registered

from .published_tables import CITYSCAPES_MTAN, NYUV2_MTAN, PublishedRow, PublishedTable

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
        published_table: the paper's table whose rows are printed beside ours (``None``: no
            published numbers are stored; ``notes`` says why).
    """

    name: str
    dataset: str
    model: str
    config: Mapping[str, Any]
    seeds: tuple[int, ...]
    source: str
    code: str
    notes: tuple[str, ...] = ()
    published_table: PublishedTable | None = None

    @property
    def published(self) -> tuple[PublishedRow, ...]:
        """The published method rows to print beside ours (none without a table)."""
        return () if self.published_table is None else self.published_table.rows

    @property
    def published_baseline(self) -> PublishedRow | None:
        """The published table's single-task row (what its Δm% is measured against)."""
        return None if self.published_table is None else self.published_table.baseline

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
_SENER_KOLTUN_NOTES = (
    "no published numbers are stored: the paper's MultiMNIST and CelebA tables could not be read "
    "from any source reachable when this recipe was written (neither the paper's text nor a "
    "reprint of those tables); the protocol is the reference code's, which the paper points to",
    "the reference code multiplies the lr by 0.85 at the start of epochs 10, 20, ... (counting "
    "from 1); StepLR(10) here does it one epoch later (epochs 11, 21, ...)",
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
        published_table=NYUV2_MTAN,
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
        published_table=CITYSCAPES_MTAN,
    ),
    "celeba-resnet18": Recipe(
        name="celeba-resnet18",
        dataset="celeba",
        model="ResNet-18 (3x3 stem, no max-pool) shared, average-pooled to 2 x 2 (2048 features), "
        "40 linear heads 2048 -> 2",
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
        "NeurIPS 2018, CelebA experiment",
        code=_SENER_KOLTUN_CODE,
        notes=_SENER_KOLTUN_NOTES
        + (
            "images are scaled to [0, 1]; the reference code subtracts a per-channel mean and "
            "then resizes with scipy's imresize, which stretches each image to 0-255 again",
            "validation is CelebA's official val partition, as in the reference code",
            "lr x0.85 every 10 epochs and 100 epochs: train_multi_task.py; Adam 5e-4, batch "
            "256: the repository's sample.json (its CelebA configuration)",
        ),
    ),
    "multimnist-lenet": Recipe(
        name="multimnist-lenet",
        dataset="multimnist",
        model="LeNet (conv 10, conv 20 + dropout, fc 50) shared, two heads fc 50-50-10 with "
        "dropout (Sener & Koltun's code)",
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
        source="Sener & Koltun, NeurIPS 2018, MultiMNIST experiment",
        code=_SENER_KOLTUN_CODE,
        notes=_SENER_KOLTUN_NOTES
        + (
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
