"""TrainConfig keys of a real dataset: dataset, data_root, dataset_options."""

from __future__ import annotations

from typing import Any

import pytest

from taskbalance.training import TrainConfig
from taskbalance.training.config import RESUME_MAY_DIFFER


def test_dataset_keys_validated() -> None:
    cfg = TrainConfig(dataset="cityscapes", data_root="/data", dataset_options={"num_classes": 19})
    assert cfg.data_name == "cityscapes" and cfg.dataset_options == {"num_classes": 19}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="'data_root' is not given"):
        TrainConfig(dataset="nyuv2")
    with pytest.raises(ValueError, match=r"'nyuv3'.*did you mean 'nyuv2'"):
        TrainConfig(dataset="nyuv3", data_root="/d")
    with pytest.raises(ValueError, match="'benchmark' .*'scenes'.* and 'dataset'.*both"):
        TrainConfig(benchmark="scenes", dataset="nyuv2", data_root="/d")
    benchmark_only: tuple[tuple[str, Any], ...] = (("size", "tiny"), ("labels", {"depth": 0.5}))
    for key, value in benchmark_only:
        with pytest.raises(ValueError, match=f"'{key}' applies to the built-in benchmarks"):
            TrainConfig(dataset="nyuv2", data_root="/d", **{key: value})
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['left'\] of dataset 'nyuv2'"):
        TrainConfig(dataset="nyuv2", data_root="/d", tasks=["left"])
    with pytest.raises(ValueError, match="'dataset_options'.*unknown option"):
        TrainConfig(dataset="nyuv2", data_root="/d", dataset_options={"num_classes": 19})
    with pytest.raises(ValueError, match="'data_root' applies to a real dataset"):
        TrainConfig(data_root="/d")


def test_old_configs_still_load_and_compare_equal() -> None:
    # a config.yaml written before these keys existed: no dataset keys at all
    old = TrainConfig(benchmark="scenes").to_dict()
    for key in ("dataset", "data_root", "dataset_options"):
        del old[key]
    cfg = TrainConfig.from_dict(old)
    assert cfg.dataset is None and cfg.data_name == "scenes"
    assert cfg.differences(old) == {}  # resuming an old run sees no change
    assert TrainConfig(dataset_options={}).dataset_options is None  # {} means the defaults
    assert "data_root" in RESUME_MAY_DIFFER  # the same data moved elsewhere may resume
