"""``pingpong``: ball visibility, event balance, physics, segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from taskbalance.data import Benchmark, load_benchmark
from taskbalance.data.pingpong import BOUNCE, NET, NONE


@pytest.fixture(scope="module")
def clips(data_cache) -> Benchmark:
    """A few hundred low-resolution clips for statistics."""
    size = {"base": "tiny", "train": 400, "val": 8, "test": 8, "height": 16, "width": 24}
    return load_benchmark("pingpong", size=size, seed=5, cache_dir=data_cache)


def test_ball_inside_frame_where_visible(tiny: dict[str, Benchmark]) -> None:
    bench = tiny["pingpong"]
    _, h, w = bench.input_shape
    for split in ("train", "val", "test"):
        ds = getattr(bench, split)
        xy = ds.extras["ball_xy"]
        visible = ds.extras["ball_visible"]
        mid = xy.shape[1] // 2
        assert visible[:, mid].all()
        inside = (
            (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
        )
        assert inside[visible].all()
        np.testing.assert_array_equal(ds.targets["ball"].numpy(), xy[:, mid])


def test_ball_is_drawn_at_its_position(tiny: dict[str, Benchmark]) -> None:
    ds = tiny["pingpong"].train
    k = ds.extras["ball_xy"].shape[1]
    mid = k // 2
    x = ds.inputs.float().numpy()
    frame = x[:, 3 * mid : 3 * mid + 3].mean(1)  # [n, H, W]
    bx = np.rint(ds.targets["ball"].numpy()).astype(int)
    at_ball = frame[np.arange(len(bx)), bx[:, 1], bx[:, 0]]
    # the middle frame differs from the other frames at the ball (the ball moved away)
    others = np.delete(x.reshape(len(x), k, 3, *x.shape[-2:]), mid, axis=1).mean((1, 2))
    moved = np.abs(at_ball - others[np.arange(len(bx)), bx[:, 1], bx[:, 0]])
    assert np.median(moved) > 20


def test_events_balanced(clips: Benchmark) -> None:
    events = clips.train.targets["events"].numpy()
    share = np.bincount(events, minlength=3) / len(events)
    assert abs(share[NONE] - 0.45) < 0.08
    assert abs(share[BOUNCE] - 0.35) < 0.08
    assert abs(share[NET] - 0.20) < 0.08
    frame_events = clips.train.extras["frame_events"]
    np.testing.assert_array_equal(frame_events[:, frame_events.shape[1] // 2], events)


def test_physics_at_events(clips: Benchmark) -> None:
    ds = clips.train
    events = ds.targets["events"].numpy()
    vel = ds.extras["ball_velocity"]
    pos = ds.extras["ball_world"]
    mid = vel.shape[1] // 2
    bounce = events == BOUNCE
    # falling before the bounce frame, rising after: the vertical velocity flips sign
    assert (vel[bounce, mid - 1, 2] < 0).all() and (vel[bounce, mid + 1, 2] > 0).all()
    assert (pos[bounce, mid - 1, 2] > pos[bounce, mid, 2] - 0.05).all()
    # bounces happen on the table top, near height 0
    assert (np.abs(pos[bounce, mid, 2]) < 0.3).all()
    assert (np.abs(pos[bounce, mid, 0]) <= 1.37 + 0.3).all()
    net = events == NET
    # the net stops the ball: the horizontal velocity reverses and shrinks
    assert (vel[net, mid - 1, 0] * vel[net, mid + 1, 0] < 0).all()
    assert (np.abs(vel[net, mid + 1, 0]) < np.abs(vel[net, mid - 1, 0])).all()
    assert (np.abs(pos[net, mid, 0]) < 0.3).all()
    # gravity between frames without events: vz decreases by g / fps
    quiet = (ds.extras["frame_events"] == NONE).all(1)
    dvz = np.diff(vel[quiet, :, 2], axis=1)
    np.testing.assert_allclose(dvz, -9.81 / clips.params["fps"], atol=1e-4)


def test_table_segmentation(tiny: dict[str, Benchmark]) -> None:
    seg = tiny["pingpong"].train.targets["table"].numpy()
    counts = np.bincount(seg.ravel(), minlength=3)
    assert len(counts) == 3 and (counts > 0).all()
    assert (seg == 1).any((1, 2)).all()  # every clip shows the table
    share = counts / counts.sum()
    assert share[2] < share[1] < share[0]  # background > table > net


def test_bad_options(tmp_path) -> None:
    with pytest.raises(ValueError, match="frames"):
        load_benchmark("pingpong", size={"base": "tiny", "frames": 4}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fraction"):
        load_benchmark("pingpong", size={"base": "tiny", "net_fraction": 0.9}, cache_dir=tmp_path)
