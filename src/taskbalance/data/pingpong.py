"""``pingpong``: TTNet-like table-tennis clips (ball position, table segmentation, events).

After TTNet (Voeikov, Falaleev & Baikulov, "TTNet: Real-time temporal and spatial video analysis
of table tennis", CVPR Workshops 2020, https://arxiv.org/abs/2004.09927): the input is a short clip
of ``frames`` consecutive RGB frames stacked on the channel axis (``[3*frames, H, W]``), seen by a
static camera at the side of the table. Three tasks with very different loss scales:

* ``ball``: the ball's pixel position ``(x, y)`` in the middle frame (``float32 [2]``; integer
  coordinates are pixel centres, so ``0 <= x <= W-1`` and ``0 <= y <= H-1``), for
  :func:`taskbalance.tasks.ball_position_task` (which turns it into 1-D Gaussian targets);
* ``table``: semantic segmentation of the middle frame, 0 background, 1 table top, 2 net;
* ``events``: what happens at the middle frame, 0 none, 1 bounce on the table, 2 net hit.

Physics (SI units, world frame: X along the table, Y across it, Z up, table top at Z = 0, net at
X = 0): each clip comes from one shot launched from behind one end of the table towards the other,
integrated with ``substeps`` Euler steps per frame under gravity. A ball crossing the table top
from above bounces with restitution ``e`` (vertical velocity ``vz -> -e*vz``) and a little
friction; a ball crossing the net plane below the net's top hits the net and drops back with a
small reversed horizontal speed. An event at continuous time ``t`` (in frames) belongs to frame
``ceil(t - 0.5)``, i.e. the frame nearest to it.

Balanced sampling: events are rare in real video. Each clip first draws its middle-frame label
with probabilities ``1 - bounce_fraction - net_fraction``, ``bounce_fraction``, ``net_fraction``;
shots meant for a net hit are aimed below the net's top. The window is then centred on a frame of
the drawn kind where the ball is visible (shots without such a frame are simulated again).

Camera: pinhole, random distance, height, offset along the table and aim point per clip (static
within a clip), with per-frame sensor noise and brightness flicker. The ball is drawn as an
anti-aliased disc of ``ball_radius`` pixels (larger than life, so it is visible at low resolution).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from taskbalance.data.benchmark import (
    BenchmarkSpec,
    SplitArrays,
    check_options,
    register_benchmark,
    sensor_noise,
    split_seeds,
    to_uint8,
)

__all__ = ["EVENTS", "NAME", "TASKS", "generate_pingpong", "simulate_shots"]

NAME = "pingpong"
TASKS = ("ball", "table", "events")
EVENTS = ("none", "bounce", "net")
SEGMENTS = ("background", "table", "net")
NONE, BOUNCE, NET = range(3)

TABLE_LENGTH, TABLE_WIDTH, NET_HEIGHT, NET_HALF_SPAN = 2.74, 1.525, 0.1525, 0.915
BALL_RADIUS_M = 0.02
GRAVITY = 9.81

DEFAULT_SIZE: dict[str, Any] = {
    "train": 2000,
    "val": 400,
    "test": 400,
    "height": 48,
    "width": 64,
    "frames": 5,
    "fps": 25.0,
    "substeps": 16,
    "shot_frames": 40,
    "restitution": 0.88,
    "bounce_fraction": 0.35,
    "net_fraction": 0.2,
    "ball_radius": 1.5,
    "noise": 0.03,
}
TINY_SIZE: dict[str, Any] = {"train": 64, "val": 24, "test": 24, "height": 24, "width": 32}
_CHUNK = 256


# --------------------------------------------------------------------------- physics


def simulate_shots(
    rng: np.random.Generator, n: int, aim_net: np.ndarray, params: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Simulate ``n`` shots.

    Args:
        rng: random generator.
        n: number of shots.
        aim_net: ``[n]`` bool, shots aimed to hit the net (others aim to clear it).
        params: generation parameters (``fps``, ``substeps``, ``shot_frames``, ``restitution``).

    Returns:
        ``pos [n, F, 3]`` and ``vel [n, F, 3]`` at each frame time, ``events [n, F]`` (event label
        of each frame), ``alive [n, F]`` (ball above the floor).
    """
    frames, sub = int(params["shot_frames"]), int(params["substeps"])
    e = float(params["restitution"])
    dt = 1.0 / (float(params["fps"]) * sub)
    direction = rng.choice([-1.0, 1.0], n)
    x = -direction * (TABLE_LENGTH / 2 + rng.uniform(0.05, 0.45, n))
    y = rng.uniform(-0.5, 0.5, n)
    z = rng.uniform(0.05, 0.4, n)
    vx = direction * rng.uniform(3.5, 7.0, n)
    vy = rng.uniform(-0.25, 0.25, n)
    # choose vz so the ball passes the net plane at a target height
    t_net = np.abs(x) / np.abs(vx)
    z_net = np.where(
        aim_net, rng.uniform(0.0, NET_HEIGHT - 0.01, n), rng.uniform(NET_HEIGHT + 0.03, 0.45, n)
    )
    vz = (z_net - z + 0.5 * GRAVITY * t_net**2) / t_net

    pos = np.zeros((n, frames, 3))
    vel = np.zeros((n, frames, 3))
    events = np.zeros((n, frames), dtype=np.int64)
    alive = np.ones((n, frames), dtype=bool)
    live = np.ones(n, dtype=bool)
    half_l, half_w = TABLE_LENGTH / 2, TABLE_WIDTH / 2
    rows = np.arange(n)
    for f in range(frames):
        pos[:, f] = np.stack([x, y, z], 1)
        vel[:, f] = np.stack([vx, vy, vz], 1)
        alive[:, f] = live
        if f == frames - 1:
            break
        for s in range(sub):
            # event time in frames since frame f, mapped to the nearest frame index
            frame_of_event = f + int(np.ceil((s + 1) / sub - 0.5))
            nx, ny = x + vx * dt, y + vy * dt
            nz = z + vz * dt - 0.5 * GRAVITY * dt * dt
            nvz = vz - GRAVITY * dt
            # net: crossing the plane X = 0 below the net's top
            crosses = (np.sign(x) != np.sign(nx)) & live
            frac = np.where(crosses, x / np.where(x == nx, 1.0, x - nx), 0.0)
            z_at = z + frac * (nz - z)
            y_at = y + frac * (ny - y)
            net_hit = (
                crosses & (z_at <= NET_HEIGHT) & (z_at >= -0.02) & (np.abs(y_at) <= NET_HALF_SPAN)
            )
            back = -np.sign(vx)
            nx = np.where(net_hit, back * BALL_RADIUS_M, nx)
            vx = np.where(net_hit, back * np.abs(vx) * rng.uniform(0.05, 0.25, n), vx)
            nvz = np.where(net_hit, 0.3 * nvz, nvz)
            vy = np.where(net_hit, 0.5 * vy, vy)
            # table: crossing Z = 0 from above inside the table
            on_table = (np.abs(nx) <= half_l) & (np.abs(ny) <= half_w)
            bounce = live & (z >= 0) & (nz < 0) & on_table & (nvz < 0)
            nz = np.where(bounce, -e * nz, nz)
            nvz = np.where(bounce, -e * nvz, nvz)
            vx = np.where(bounce, 0.97 * vx, vx)
            idx = min(frame_of_event, frames - 1)
            events[rows[net_hit], idx] = NET
            events[rows[bounce & (events[:, idx] == NONE)], idx] = BOUNCE
            x, y, z, vz = nx, ny, nz, nvz
            live = live & (z > -0.76)  # dropped to the floor: end of the shot
    return {"pos": pos, "vel": vel, "events": events, "alive": alive}


# --------------------------------------------------------------------------- camera


def _sample_cameras(rng: np.random.Generator, n: int, width: int) -> dict[str, np.ndarray]:
    distance = rng.uniform(2.6, 3.2, n)
    side = rng.choice([-1.0, 1.0], n)
    centre = np.stack(
        [side * rng.uniform(0.3, 0.65, n), -distance, rng.uniform(1.0, 1.6, n)], axis=1
    )
    target = np.stack(
        [rng.uniform(-0.15, 0.15, n), rng.uniform(-0.1, 0.3, n), rng.uniform(0.0, 0.25, n)], axis=1
    )
    forward = target - centre
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(right, forward)
    hfov = np.deg2rad(rng.uniform(52.0, 60.0, n))
    focal = (width / 2.0) / np.tan(hfov / 2.0)
    return {"centre": centre, "right": right, "up": up, "forward": forward, "focal": focal}


def _project(
    cam: dict[str, np.ndarray], points: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points ``[n, ..., 3]`` to pixel coordinates (integer = pixel centre)."""
    shape = (points.shape[0],) + (1,) * (points.ndim - 2) + (3,)
    rel = points - cam["centre"].reshape(shape)
    xc = (rel * cam["right"].reshape(shape)).sum(-1)
    yc = (rel * cam["up"].reshape(shape)).sum(-1)
    zc = (rel * cam["forward"].reshape(shape)).sum(-1)
    focal = cam["focal"].reshape(shape[:-1])
    u = (width - 1) / 2.0 + focal * xc / zc
    v = (height - 1) / 2.0 - focal * yc / zc
    return u, v, zc


def _inside_convex(
    u: np.ndarray, v: np.ndarray, poly_u: np.ndarray, poly_v: np.ndarray
) -> np.ndarray:
    """``[n, P]`` mask of pixel centres inside convex polygons ``[n, V]`` (any orientation)."""
    parts = []
    count = poly_u.shape[1]
    for i in range(count):
        j = (i + 1) % count
        ex, ey = (poly_u[:, j] - poly_u[:, i])[:, None], (poly_v[:, j] - poly_v[:, i])[:, None]
        parts.append(ex * (v[None] - poly_v[:, i, None]) - ey * (u[None] - poly_u[:, i, None]))
    signs = np.stack(parts)
    return np.asarray((signs >= 0).all(0) | (signs <= 0).all(0))


# --------------------------------------------------------------------------- clips


def _choose_clips(
    rng: np.random.Generator, n: int, params: dict[str, Any], cam: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Simulate shots until each clip has a visible middle frame of its drawn label."""
    height, width, k = params["height"], params["width"], params["frames"]
    frames = int(params["shot_frames"])
    p_b, p_n = float(params["bounce_fraction"]), float(params["net_fraction"])
    label = rng.choice(3, size=n, p=[1.0 - p_b - p_n, p_b, p_n])
    half = k // 2
    out = {
        "pos": np.zeros((n, k, 3)),
        "vel": np.zeros((n, k, 3)),
        "events": np.zeros((n, k), np.int64),
        "alive": np.zeros((n, k), bool),
    }
    todo = np.arange(n)
    for _ in range(200):
        if todo.size == 0:
            break
        shots = simulate_shots(rng, todo.size, label[todo] == NET, params)
        sub_cam = {key: val[todo] for key, val in cam.items()}
        u, v, zc = _project(sub_cam, shots["pos"], height, width)
        under_table = (shots["pos"][..., 2] < 0) & (
            np.abs(shots["pos"][..., 0]) <= TABLE_LENGTH / 2
        )
        visible = (
            shots["alive"] & ~under_table & (zc > 0.1)
            & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
        )  # fmt: skip
        ok = visible & (shots["events"] == label[todo, None])
        ok[:, :half] = False
        ok[:, frames - half :] = False
        # pick a random admissible middle frame per shot
        score = np.where(ok, rng.random(ok.shape), -1.0)
        middle = score.argmax(1)
        found = ok.any(1)
        window = middle[found, None] + np.arange(-half, k - half)[None]
        rows = np.arange(todo.size)[found, None]
        dest = todo[found]
        for key in out:
            out[key][dest] = shots[key][rows, window]
        out["alive"][dest] &= visible[rows, window]
        todo = todo[~found]
    if todo.size:
        raise RuntimeError(
            f"could not find clips for {todo.size} samples; check bounce_fraction/net_fraction "
            "and the camera parameters"
        )
    out["label"] = label
    return out


def _render(
    rng: np.random.Generator, params: dict[str, Any], cam: dict[str, np.ndarray],
    clips: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Render clips: ``(uint8 [n, 3*K, H, W], segmentation [n, H, W], ball_xy [n, K, 2])``."""
    height, width, k = params["height"], params["width"], params["frames"]
    n = clips["pos"].shape[0]
    vv, uu = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                         indexing="ij")  # fmt: skip
    u, v = uu.ravel(), vv.ravel()

    hl, hw = TABLE_LENGTH / 2, TABLE_WIDTH / 2
    table = np.array([[-hl, -hw, 0.0], [hl, -hw, 0.0], [hl, hw, 0.0], [-hl, hw, 0.0]])
    net = np.array(
        [[0, -NET_HALF_SPAN, 0], [0, NET_HALF_SPAN, 0], [0, NET_HALF_SPAN, NET_HEIGHT],
         [0, -NET_HALF_SPAN, NET_HEIGHT]], dtype=np.float64
    )  # fmt: skip
    tu, tv, _ = _project(cam, np.broadcast_to(table, (n, 4, 3)), height, width)
    nu, nv, _ = _project(cam, np.broadcast_to(net, (n, 4, 3)), height, width)
    in_table = _inside_convex(u, v, tu, tv)
    in_net = _inside_convex(u, v, nu, nv)
    seg = np.where(in_net, 2, np.where(in_table, 1, 0)).astype(np.int64)

    # static background: wall above a floor line, table, net
    horizon = rng.uniform(0.2, 0.55, (n, 1)) * height
    wall = rng.uniform(0.15, 0.6, (n, 3))
    floor = rng.uniform(0.2, 0.7, (n, 3))
    table_rgb = np.stack(
        [rng.uniform(0.05, 0.2, n), rng.uniform(0.15, 0.45, n), rng.uniform(0.35, 0.7, n)], 1
    )
    table_rgb = np.where(rng.random((n, 1)) < 0.3, table_rgb[:, [0, 2, 1]], table_rgb)  # green
    net_rgb = rng.uniform(0.75, 0.95, (n, 1)) * np.ones((1, 3))
    gradient = (v[None] / height)[:, None]  # [1, 1, P]
    bg = np.where((v[None] < horizon)[:, None], wall[..., None], floor[..., None]) * (
        0.8 + 0.3 * gradient
    )
    bg = np.where((seg == 1)[:, None], table_rgb[..., None] * (0.9 + 0.2 * gradient), bg)
    bg = np.where((seg == 2)[:, None], 0.4 * bg + 0.6 * net_rgb[..., None], bg)

    # ball per frame
    bu, bv, zc = _project(cam, clips["pos"], height, width)  # [n, K]
    ball_rgb = np.where(
        rng.random((n, 1)) < 0.5, np.array([[1.0, 0.55, 0.1]]), np.array([[0.97, 0.97, 0.95]])
    )
    radius = float(params["ball_radius"]) * width / 64.0
    frames = np.empty((n, k, 3, height * width), dtype=np.float32)
    flicker = rng.uniform(0.95, 1.05, (n, k, 1, 1)).astype(np.float32)
    bg = bg.astype(np.float32)
    for j in range(k):
        dist = np.hypot(u[None] - bu[:, j, None], v[None] - bv[:, j, None]).astype(np.float32)
        alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0) * clips["alive"][:, j, None]
        alpha = alpha[:, None]
        np.multiply(bg, 1.0 - alpha, out=frames[:, j])
        frames[:, j] += ball_rgb[..., None].astype(np.float32) * alpha
        frames[:, j] *= flicker[:, j]
    frames += sensor_noise(rng, frames.shape, float(params["noise"]))
    clip_u8 = to_uint8(frames).reshape(n, k * 3, height, width)
    ball_xy = np.stack([bu, bv], -1).astype(np.float32)
    return clip_u8, seg.reshape(n, height, width), ball_xy


def _check(params: dict[str, Any]) -> None:
    height, width, k = params["height"], params["width"], params["frames"]
    if not (isinstance(height, int) and isinstance(width, int) and height >= 8 and width >= 8):
        raise ValueError(f"height and width must be ints >= 8, got {height!r}, {width!r}")
    if not (isinstance(k, int) and k >= 1 and k % 2 == 1):
        raise ValueError(f"frames must be an odd positive int (a middle frame), got {k!r}")
    if not (isinstance(params["shot_frames"], int) and params["shot_frames"] >= k + 10):
        raise ValueError(
            f"shot_frames must be an int >= frames + 10, got {params['shot_frames']!r}"
        )
    if not (isinstance(params["substeps"], int) and params["substeps"] >= 1):
        raise ValueError(f"substeps must be a positive int, got {params['substeps']!r}")
    if not 5.0 <= float(params["fps"]) <= 500.0:
        raise ValueError(f"fps must be in [5, 500], got {params['fps']!r}")
    if not 0.0 < float(params["restitution"]) < 1.0:
        raise ValueError(f"restitution must be in (0, 1), got {params['restitution']!r}")
    p_b, p_n = float(params["bounce_fraction"]), float(params["net_fraction"])
    if p_b < 0 or p_n < 0 or p_b + p_n > 1:
        raise ValueError(
            f"bounce_fraction and net_fraction must be >= 0 with sum <= 1, got {p_b}, {p_n}"
        )


def generate_pingpong(seed: int, params: dict[str, Any]) -> dict[str, SplitArrays]:
    """Generate the three splits of ``pingpong`` (independent shots and cameras per split)."""
    _check(params)
    out: dict[str, SplitArrays] = {}
    mid = params["frames"] // 2
    for split in ("train", "val", "test"):
        rng = split_seeds(seed, f"pingpong/{split}")
        n = params[split]
        cam = _sample_cameras(rng, n, params["width"])
        clips = _choose_clips(rng, n, params, cam)
        parts = []
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(n, start + _CHUNK))
            sub_cam = {key: val[sl] for key, val in cam.items()}
            sub_clips = {key: val[sl] for key, val in clips.items()}
            parts.append(_render(rng, params, sub_cam, sub_clips))
        inputs, seg, ball_xy = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        out[split] = SplitArrays(
            inputs=inputs,
            targets={"ball": ball_xy[:, mid].copy(), "table": seg, "events": clips["label"]},
            extras={
                "ball_xy": ball_xy,
                "ball_visible": clips["alive"],
                "ball_world": clips["pos"].astype(np.float32),
                "ball_velocity": clips["vel"].astype(np.float32),
                "frame_events": clips["events"],
            },
        )
    return out


def _make_tasks(params: dict[str, Any]) -> list:
    from taskbalance.tasks import ball_position_task, event_task, segmentation_task

    return [
        ball_position_task("ball", params["width"], params["height"]),
        segmentation_task("table", len(SEGMENTS)),
        event_task("events", len(EVENTS), background_class=NONE),
    ]


def _make_model(params: dict[str, Any], options: dict[str, Any]) -> Any:
    """CNN over the stacked frames with a coordinate, a segmentation and an event head."""
    from taskbalance.data._models import clip_model

    opts = check_options(options, {"width": 24}, "pingpong.build_model")
    return clip_model(
        in_channels=3 * params["frames"],
        image_size=(params["height"], params["width"]),
        num_segments=len(SEGMENTS),
        num_events=len(EVENTS),
        **opts,
    )


SPEC = register_benchmark(
    BenchmarkSpec(
        name=NAME,
        description="TTNet-like table-tennis clips (ball position, table segmentation, events)",
        version=2,
        default_size=DEFAULT_SIZE,
        tiny_size=TINY_SIZE,
        task_names=TASKS,
        generate=generate_pingpong,
        make_tasks=_make_tasks,
        make_model=_make_model,
        input_shape=lambda p: (3 * p["frames"], p["height"], p["width"]),
    )
)
