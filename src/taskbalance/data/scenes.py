"""``scenes``: NYUv2-like indoor scenes, ray-cast so every pixel has exact labels.

Each scene is a closed room (floor, ceiling, side, back and front walls) holding up to
``2 * max_per_type`` primitives standing on the floor: spheres, yaw-rotated boxes and vertical
cylinders, each with its own colour. A pinhole camera (random height, position, pitch and yaw)
looks into the room. For every pixel a ray is intersected analytically with the room and the
primitives (vectorised over all pixels of a chunk of scenes), which gives

* ``segmentation``: the class of the nearest surface -- 0 floor, 1 wall, 2 sphere, 3 box,
  4 cylinder, 5 ceiling (:data:`CLASSES`);
* ``depth``: the distance along the camera's optical (z) axis, always > 0;
* ``normals``: the unit surface normal in the camera frame (x right, y up, z forward, so
  visible surfaces have a negative z component).

The RGB input is rendered with Lambertian shading from a random directional light plus ambient
light, hard shadows cast by the primitives, a checker texture on the floor, per-surface texture
noise and camera noise.

The three tasks have very different natures (per-pixel classification, scale regression, unit
vector regression), as in NYUv2 (Silberman et al., ECCV 2012) used by MTAN, Nash-MTL, etc.
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

__all__ = ["CLASSES", "NAME", "TASKS", "camera_rotation", "generate_scenes", "render_scenes"]

NAME = "scenes"
TASKS = ("segmentation", "depth", "normals")
CLASSES = ("floor", "wall", "sphere", "box", "cylinder", "ceiling")
FLOOR, WALL, SPHERE, BOX, CYLINDER, CEILING = range(6)

DEFAULT_SIZE: dict[str, Any] = {
    "train": 2000,
    "val": 400,
    "test": 400,
    "height": 32,
    "width": 48,
    "max_per_type": 2,
    "fov_degrees": 62.0,
    "noise": 0.02,
}
TINY_SIZE: dict[str, Any] = {"train": 48, "val": 16, "test": 16, "height": 16, "width": 24}

_EPS = 1e-4
#: a 3-vector field as three broadcastable arrays (x, y, z), e.g. ``[n, P]`` each
_Vec = tuple[np.ndarray, ...]
_CHUNK = 256


def _sample_scenes(rng: np.random.Generator, n: int, k: int) -> dict[str, np.ndarray]:
    """Random room, camera, light and object parameters for ``n`` scenes (``k`` slots/type)."""
    p: dict[str, np.ndarray] = {}
    p["room_w"] = rng.uniform(4.0, 7.0, n)  # x extent
    p["room_d"] = rng.uniform(5.0, 9.0, n)  # back wall z
    p["room_h"] = rng.uniform(2.5, 3.2, n)  # ceiling y
    p["cam_x"] = rng.uniform(-0.25, 0.25, n) * p["room_w"]
    p["cam_y"] = rng.uniform(1.1, 1.8, n)
    p["pitch"] = np.deg2rad(rng.uniform(8.0, 28.0, n))  # looking down
    p["yaw"] = np.deg2rad(rng.uniform(-20.0, 20.0, n))
    # light direction (towards the light): from above, random azimuth
    elev = np.deg2rad(rng.uniform(35.0, 75.0, n))
    azim = rng.uniform(0.0, 2.0 * np.pi, n)
    p["light"] = np.stack(
        [np.cos(elev) * np.cos(azim), np.sin(elev), np.cos(elev) * np.sin(azim)], axis=1
    )
    p["ambient"] = rng.uniform(0.25, 0.45, n)
    p["floor_rgb"] = rng.uniform(0.35, 0.8, (n, 3))
    p["wall_rgb"] = rng.uniform(0.45, 0.9, (n, 3))
    p["ceil_rgb"] = rng.uniform(0.7, 0.95, (n, 3))
    p["checker"] = rng.uniform(0.3, 0.8, n)  # floor tile size (m)

    def place(radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Floor positions in front of the camera, inside the room."""
        half_w = (p["room_w"] / 2)[:, None] - radius - 0.05
        x = rng.uniform(-1.0, 1.0, radius.shape) * half_w
        z_lo, z_hi = 1.8 + radius, p["room_d"][:, None] - radius - 0.1
        z = z_lo + rng.uniform(0.0, 1.0, radius.shape) * (z_hi - z_lo)
        return x, z

    for kind in ("sphere", "box", "cyl"):
        p[f"{kind}_on"] = rng.random((n, k)) < 0.6
        p[f"{kind}_rgb"] = rng.uniform(0.15, 1.0, (n, k, 3))
    # at least one object per scene
    none = ~(p["sphere_on"].any(1) | p["box_on"].any(1) | p["cyl_on"].any(1))
    p["sphere_on"][none, 0] = True

    p["sphere_r"] = rng.uniform(0.25, 0.7, (n, k))
    p["sphere_x"], p["sphere_z"] = place(p["sphere_r"])
    p["sphere_y"] = p["sphere_r"].copy()  # resting on the floor
    p["box_hx"] = rng.uniform(0.2, 0.7, (n, k))
    p["box_hy"] = rng.uniform(0.2, 0.7, (n, k))
    p["box_hz"] = rng.uniform(0.2, 0.7, (n, k))
    p["box_yaw"] = rng.uniform(0.0, np.pi / 2, (n, k))
    p["box_x"], p["box_z"] = place(np.hypot(p["box_hx"], p["box_hz"]))
    p["cyl_r"] = rng.uniform(0.15, 0.5, (n, k))
    p["cyl_h"] = rng.uniform(0.4, 1.6, (n, k))
    p["cyl_x"], p["cyl_z"] = place(p["cyl_r"])
    return {key: v.astype(np.float32) if v.dtype == np.float64 else v for key, v in p.items()}


def camera_rotation(pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """``[n, 3, 3]`` camera-to-world rotations (pitch about x, then yaw about y)."""
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(pitch), np.ones_like(pitch)
    r_pitch = np.stack(
        [np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1),
         np.stack([zero, sp, cp], -1)], -2
    )  # fmt: skip
    r_yaw = np.stack(
        [np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1),
         np.stack([-sy, zero, cy], -1)], -2
    )  # fmt: skip
    return r_yaw @ r_pitch


class _Hits:
    """Nearest-hit bookkeeping over ``[n, P]`` rays."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.t = np.full(shape, np.inf, dtype=np.float32)
        self.cls = np.zeros(shape, dtype=np.int64)
        self.normal = np.zeros((3, *shape), dtype=np.float32)
        self.rgb = np.zeros((3, *shape), dtype=np.float32)

    def update(
        self, t: np.ndarray, cls: int, normal: tuple[np.ndarray, ...], rgb: np.ndarray
    ) -> None:
        closer = t < self.t
        self.t = np.where(closer, t, self.t)
        self.cls = np.where(closer, cls, self.cls)
        for i in range(3):
            self.normal[i] = np.where(closer, normal[i], self.normal[i])
            self.rgb[i] = np.where(closer, rgb[:, i, None], self.rgb[i])


def _sphere(o: _Vec, d: _Vec, c: _Vec, r: np.ndarray) -> tuple[np.ndarray, _Vec]:
    """Nearest positive ray parameter of sphere hits (inf where none) and the hit normal."""
    ox, oy, oz = (o[i] - c[i][:, None] for i in range(3))
    a = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    b = 2.0 * (d[0] * ox + d[1] * oy + d[2] * oz)
    cc = ox**2 + oy**2 + oz**2 - (r**2)[:, None]
    disc = b * b - 4.0 * a * cc
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / (2.0 * a)
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    rr = r[:, None]
    normal = ((ox + t * d[0]) / rr, (oy + t * d[1]) / rr, (oz + t * d[2]) / rr)
    return t, normal


def _box(o: _Vec, d: _Vec, c: _Vec, half: _Vec, yaw: np.ndarray) -> tuple[np.ndarray, _Vec]:
    """Ray/box intersection for boxes rotated by ``yaw`` about the vertical axis."""
    cs, sn = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    rel = [o[i] - c[i][:, None] for i in range(3)]
    # world -> local (inverse yaw rotation)
    lo = (cs * rel[0] - sn * rel[2], rel[1], sn * rel[0] + cs * rel[2])
    ld = (cs * d[0] - sn * d[2], d[1], sn * d[0] + cs * d[2])
    near = np.full(d[0].shape, -np.inf)
    far = np.full(d[0].shape, np.inf)
    axis = np.zeros(d[0].shape, dtype=np.int64)
    for i in range(3):
        di = np.where(np.abs(ld[i]) < 1e-12, 1e-12, ld[i])
        h = half[i][:, None]
        t1, t2 = (-h - lo[i]) / di, (h - lo[i]) / di
        tmin = np.minimum(t1, t2)
        axis = np.where(tmin > near, i, axis)
        near = np.maximum(near, tmin)
        far = np.minimum(far, np.maximum(t1, t2))
    t = np.where((near <= far) & (near > _EPS), near, np.inf)
    sign = -np.sign(np.choose(axis, ld))
    lx, ly, lz = ((axis == i) * sign for i in range(3))
    normal = (cs * lx + sn * lz, ly.astype(float), -sn * lx + cs * lz)
    return t, normal


def _cylinder(o: _Vec, d: _Vec, c: _Vec, r: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, _Vec]:
    """Ray intersection with vertical capped cylinders standing on the floor (y = 0)."""
    ox, oz = o[0] - c[0][:, None], o[2] - c[2][:, None]
    rr, hh = r[:, None], h[:, None]
    a = np.maximum(d[0] ** 2 + d[2] ** 2, 1e-12)
    b = 2.0 * (d[0] * ox + d[2] * oz)
    cc = ox**2 + oz**2 - rr**2
    disc = b * b - 4.0 * a * cc
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    y_side = o[1] + t_side * d[1]
    t_side = np.where(
        (disc >= 0) & (t_side > _EPS) & (y_side >= 0) & (y_side <= hh), t_side, np.inf
    )
    dy = np.where(np.abs(d[1]) < 1e-12, 1e-12, d[1])
    t_cap = (hh - o[1]) / dy
    cap_x, cap_z = ox + t_cap * d[0], oz + t_cap * d[2]
    t_cap = np.where((t_cap > _EPS) & (cap_x**2 + cap_z**2 <= rr**2), t_cap, np.inf)
    side = t_side <= t_cap
    t = np.minimum(t_side, t_cap)
    normal = (
        np.where(side, (ox + t_side * d[0]) / rr, 0.0),
        np.where(side, 0.0, np.sign(-dy)),
        np.where(side, (oz + t_side * d[2]) / rr, 0.0),
    )
    return t, normal


def _objects(
    o: _Vec, d: _Vec, p: dict[str, np.ndarray], sl: slice, k: int, hits: _Hits | None
) -> np.ndarray:
    """Intersect every primitive slot; update ``hits`` or return the nearest object distance."""
    nearest = np.full(d[0].shape, np.inf)
    for j in range(k):
        for kind, cls in (("sphere", SPHERE), ("box", BOX), ("cyl", CYLINDER)):
            on = p[f"{kind}_on"][sl, j]
            if not on.any():
                continue
            if kind == "sphere":
                c = (p["sphere_x"][sl, j], p["sphere_y"][sl, j], p["sphere_z"][sl, j])
                t, normal = _sphere(o, d, c, p["sphere_r"][sl, j])
            elif kind == "box":
                c = (p["box_x"][sl, j], p["box_hy"][sl, j], p["box_z"][sl, j])
                half = (p["box_hx"][sl, j], p["box_hy"][sl, j], p["box_hz"][sl, j])
                t, normal = _box(o, d, c, half, p["box_yaw"][sl, j])
            else:
                c = (p["cyl_x"][sl, j], p["cyl_h"][sl, j], p["cyl_z"][sl, j])  # y unused
                t, normal = _cylinder(o, d, c, p["cyl_r"][sl, j], p["cyl_h"][sl, j])
            t = np.where(on[:, None], t, np.inf)
            if hits is None:
                nearest = np.minimum(nearest, t)
            else:
                hits.update(t, cls, normal, p[f"{kind}_rgb"][sl, j])
    return nearest


def render_scenes(
    rng: np.random.Generator, n: int, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` random scenes.

    Returns:
        ``(rgb uint8 [n, 3, H, W], classes int64 [n, H, W], depth float32 [n, 1, H, W],
        normals float32 [n, 3, H, W], camera float32 [n, 4])``; ``camera`` holds the camera's
        world position x, y (height above the floor; z = 0) and its pitch and yaw in radians
        (camera-to-world rotation ``R = R_yaw @ R_pitch``, see :func:`camera_rotation`).
    """
    height, width, k = _check_render_params(params)
    p = _sample_scenes(rng, n, k)
    noise = sensor_noise(rng, (n, 3, height * width), float(params["noise"]))
    texture = rng.standard_normal((n, height * width), dtype=np.float32) * 0.04
    cam_dirs = _camera_rays(height, width, float(params["fov_degrees"]))
    rot = camera_rotation(p["pitch"], p["yaw"])

    rgb = np.empty((n, 3, height * width), dtype=np.float32)
    cls = np.empty((n, height * width), dtype=np.int64)
    depth = np.empty((n, height * width), dtype=np.float32)
    normals = np.empty((n, 3, height * width), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        r = rot[sl]
        d = tuple(np.einsum("nj,jp->np", r[:, i, :], cam_dirs) for i in range(3))
        m = sl.stop - sl.start
        o = (p["cam_x"][sl, None], p["cam_y"][sl, None], np.zeros((m, 1), np.float32))
        hits = _trace(o, d, p, sl, k)
        rgb[sl] = _shade(o, d, hits, p, sl, k, texture[sl]) + noise[sl]
        cls[sl] = hits.cls
        depth[sl] = hits.t
        # world -> camera frame: n_cam = R^T n_world
        n_world = np.stack(list(hits.normal), axis=1)  # [m, 3, P]
        n_cam = np.einsum("nij,nip->njp", r, n_world)
        n_cam /= np.linalg.norm(n_cam, axis=1, keepdims=True)
        normals[sl] = n_cam

    shape = (height, width)
    camera = np.stack([p["cam_x"], p["cam_y"], p["pitch"], p["yaw"]], axis=1)
    return (
        to_uint8(rgb).reshape(n, 3, *shape),
        cls.reshape(n, *shape),
        depth.reshape(n, 1, *shape),
        normals.reshape(n, 3, *shape),
        camera.astype(np.float32),
    )


def _check_render_params(params: dict[str, Any]) -> tuple[int, int, int]:
    """``(height, width, max_per_type)`` after checking them and ``fov_degrees``."""
    height, width, k = params["height"], params["width"], params["max_per_type"]
    if not (isinstance(height, int) and isinstance(width, int) and height >= 4 and width >= 4):
        raise ValueError(f"height and width must be ints >= 4, got {height!r}, {width!r}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"max_per_type must be an int >= 1, got {k!r}")
    if not 10.0 <= float(params["fov_degrees"]) <= 120.0:
        raise ValueError(f"fov_degrees must be in [10, 120], got {params['fov_degrees']!r}")
    return height, width, k


def _camera_rays(height: int, width: int, fov_degrees: float) -> np.ndarray:
    """Pixel ray directions ``[3, H*W]`` in the camera frame, with z = 1 so that the ray
    parameter t is the camera-z depth."""
    focal = (width / 2.0) / np.tan(np.deg2rad(fov_degrees) / 2.0)
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack(
        [
            (u.ravel() - width / 2.0) / focal,
            -(v.ravel() - height / 2.0) / focal,
            np.ones(height * width),
        ]
    ).astype(np.float32)  # fmt: skip


def _trace(o: _Vec, d: _Vec, p: dict[str, np.ndarray], sl: slice, k: int) -> _Hits:
    """The first surface each ray of the scenes ``sl`` hits: the room's walls, then objects."""
    m = sl.stop - sl.start
    hits = _Hits((m, d[0].shape[1]))
    # room: the camera is inside an axis-aligned box; the exit face is what the ray sees
    bounds: tuple[tuple[np.ndarray, np.ndarray, int, int], ...] = (
        (-p["room_w"][sl] / 2, p["room_w"][sl] / 2, WALL, WALL),
        (np.zeros(m, np.float32), p["room_h"][sl], FLOOR, CEILING),
        (np.full(m, -1.0, np.float32), p["room_d"][sl], WALL, WALL),
    )
    colours = {FLOOR: p["floor_rgb"][sl], WALL: p["wall_rgb"][sl], CEILING: p["ceil_rgb"][sl]}
    for axis, (lo, hi, cls_lo, cls_hi) in enumerate(bounds):
        for plane, c, sign in ((lo, cls_lo, 1.0), (hi, cls_hi, -1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (plane[:, None] - o[axis]) / d[axis]
            t = np.where((t > _EPS) & np.isfinite(t), t, np.inf)
            normal = tuple(np.full_like(t, sign if i == axis else 0.0) for i in range(3))
            hits.update(t, c, normal, colours[c])
    _objects(o, d, p, sl, k, hits)
    return hits


def _shade(
    o: _Vec,
    d: _Vec,
    hits: _Hits,
    p: dict[str, np.ndarray],
    sl: slice,
    k: int,
    texture: np.ndarray,
) -> np.ndarray:
    """Noise-free colours ``[m, 3, P]``: albedo (floor checker, texture) times Lambert light
    with hard shadows plus ambient."""
    t = hits.t
    px, py, pz = (o[i] + t * d[i] for i in range(3))
    nx, ny, nz = hits.normal
    tile = p["checker"][sl, None]
    checker = (np.floor(px / tile) + np.floor(pz / tile)) % 2
    pattern = np.where(hits.cls == FLOOR, 0.8 + 0.3 * checker, 1.0) * (1.0 + texture)
    albedo = np.moveaxis(hits.rgb, 0, 1) * pattern[:, None]  # [m, 3, P]
    light = p["light"][sl]
    lam = np.maximum(nx * light[:, 0, None] + ny * light[:, 1, None] + nz * light[:, 2, None], 0)
    # hard shadows: a ray from the surface towards the light, against the primitives only
    so = (px + 1e-3 * nx, py + 1e-3 * ny, pz + 1e-3 * nz)
    sd = tuple(np.broadcast_to(light[:, i, None], t.shape) for i in range(3))
    lit = np.isinf(_objects(so, sd, p, sl, k, None))
    ambient = p["ambient"][sl, None]
    shade = ambient + (1.0 - ambient) * lam * lit
    return albedo * shade[:, None]


def generate_scenes(seed: int, params: dict[str, Any]) -> dict[str, SplitArrays]:
    """Generate the three splits of ``scenes`` (independent scenes per split)."""
    out: dict[str, SplitArrays] = {}
    for split in ("train", "val", "test"):
        rng = split_seeds(seed, f"scenes/{split}")
        rgb, cls, depth, normals, camera = render_scenes(rng, params[split], params)
        out[split] = SplitArrays(
            inputs=rgb,
            targets={"segmentation": cls, "depth": depth, "normals": normals},
            extras={"camera": camera},
        )
    return out


def _make_tasks(params: dict[str, Any]) -> list:
    from taskbalance.tasks import depth_task, normal_task, segmentation_task

    return [
        segmentation_task("segmentation", len(CLASSES)),
        depth_task("depth"),
        normal_task("normals"),
    ]


def _make_model(params: dict[str, Any], options: dict[str, Any]) -> Any:
    """SegNet-style encoder-decoder shared by three dense heads."""
    from taskbalance.data._models import segnet_dense

    opts = check_options(options, {"width": 16}, "scenes.build_model")
    return segnet_dense(
        in_channels=3,
        heads={"segmentation": len(CLASSES), "depth": 1, "normals": 3},
        normalize=("normals",),
        **opts,
    )


SPEC = register_benchmark(
    BenchmarkSpec(
        name=NAME,
        description="NYUv2-like ray-cast indoor scenes (segmentation, depth, normals)",
        version=1,
        default_size=DEFAULT_SIZE,
        tiny_size=TINY_SIZE,
        task_names=TASKS,
        generate=generate_scenes,
        make_tasks=_make_tasks,
        make_model=_make_model,
        input_shape=lambda p: (3, p["height"], p["width"]),
    )
)
