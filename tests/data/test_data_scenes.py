"""``scenes``: exact per-pixel geometry of the ray-cast scenes."""

from __future__ import annotations

import numpy as np
import pytest

from taskbalance.data import Benchmark
from taskbalance.data.scenes import CLASSES, DEFAULT_SIZE, TINY_SIZE, camera_rotation, render_scenes


@pytest.fixture(scope="module")
def rendered() -> tuple[dict, tuple[np.ndarray, ...]]:
    params = {**DEFAULT_SIZE, **TINY_SIZE}
    return params, render_scenes(np.random.default_rng(123), 96, params)


def _camera_rays(params: dict) -> np.ndarray:
    """``[3, H, W]`` camera-frame ray directions with z = 1 (as in the renderer)."""
    h, w = params["height"], params["width"]
    focal = (w / 2.0) / np.tan(np.deg2rad(params["fov_degrees"]) / 2.0)
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return np.stack([(u - w / 2.0) / focal, -(v - h / 2.0) / focal, np.ones_like(u)])


def test_targets_of_the_benchmark(tiny: dict[str, Benchmark]) -> None:
    ds = tiny["scenes"].train
    normals = ds.targets["normals"].numpy()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
    depth = ds.targets["depth"].numpy()
    assert np.isfinite(depth).all() and (depth > 0).all()
    seg = ds.targets["segmentation"].numpy()
    assert seg.min() >= 0 and seg.max() < len(CLASSES)


def test_all_classes_occur(rendered) -> None:
    _, (rgb, seg, depth, normals, camera) = rendered
    counts = np.bincount(seg.ravel(), minlength=len(CLASSES))
    assert (counts > 0).all(), dict(zip(CLASSES, counts.tolist(), strict=True))
    # floor and walls dominate, objects are a real share of the pixels
    assert counts[0] / counts.sum() > 0.2 and counts[1] / counts.sum() > 0.15
    assert counts[2:5].sum() / counts.sum() > 0.05


def test_visible_surfaces_face_the_camera(rendered) -> None:
    params, (rgb, seg, depth, normals, camera) = rendered
    rays = _camera_rays(params)
    cosine = (normals * rays[None]).sum(1)
    assert (cosine < 1e-5).all()


def test_floor_points_lie_on_the_floor(rendered) -> None:
    """Back-projecting floor pixels with their depth lands at height 0; floor normals are up."""
    params, (rgb, seg, depth, normals, camera) = rendered
    rays = _camera_rays(params)
    rot = camera_rotation(camera[:, 2].astype(np.float64), camera[:, 3].astype(np.float64))
    points_cam = depth * rays[None]  # [n, 3, H, W]
    world_y = camera[:, 1, None, None] + np.einsum("nj,njhw->nhw", rot[:, 1, :], points_cam)
    floor = seg == 0
    np.testing.assert_allclose(world_y[floor], 0.0, atol=2e-3)
    up_cam = rot[:, 1, :]  # R^T e_y, the world's up axis in camera coordinates
    floor_normals = np.moveaxis(normals, 1, -1)[floor]
    expected = np.broadcast_to(up_cam[:, None, None, :], (*seg.shape, 3))[floor]
    np.testing.assert_allclose(floor_normals, expected, atol=1e-4)
    # objects stand in the room: above the floor, below the ceiling
    objects = (seg >= 2) & (seg <= 4)
    assert (world_y[objects] > -1e-3).all() and (world_y[objects] < 3.2).all()


def test_rendering_is_shaded(rendered) -> None:
    _, (rgb, seg, depth, normals, camera) = rendered
    # same class, different normals -> different brightness somewhere (Lambertian shading)
    assert rgb.dtype == np.uint8 and rgb.std() > 10
