"""An upright world for a reconstructed scene: +Z up, the objects standing on z = 0 (numpy only).

Scene mode places every object in the point-map camera's frame, where "up" is wherever the photo was
tilted. Every object comes out of CUPID upright in its own frame (Z up), so each placement's rotation
says where up is: object k's up, in the camera frame, is ``R_k @ e_z``. :func:`upright_world` takes
the robust consensus of those directions (an object lying on its side, or a wrong placement, points
elsewhere and is out-voted), levels the world on it and puts the objects' lowest point on z = 0.

With two objects that disagree no majority exists; the photo itself then decides: a photo is taken
with its horizon roughly level and not upside down, and from above the surface the objects stand on
(a camera below that surface would look at it from underneath). A candidate up that makes the camera
implausible (rolled far over, pitched far up, below the ground) costs votes (:func:`camera_prior_cost`).

Where the point map shows a large plane under the objects (a floor or a table top, RANSAC over the
point map), its normal, measured from thousands of pixels, refines up and its height sets z = 0.

The returned rigid motion maps the camera-frame world to the upright one; yaw is chosen so that the
camera looks along +Y (Blender's front view) with its right along +X, and the objects' footprint is
centred on the origin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..geometry import Similarity

__all__ = ["UprightWorld", "upright_world", "object_ups", "camera_prior_cost", "find_ground_plane",
           "GroundPlane", "level_rotation"]

AGREE_DEG = 12.0            # objects whose ups lie within this angle vote for the same up
PLANE_MAX_TILT_DEG = 25.0   # a ground plane may refine up by at most this much
PLANE_MIN_SHARE = 0.05      # "large": at least this share of the point map's valid pixels
MAX_VERTICES = 4000         # per object, for the floor and the prior (an even subsample)


@dataclass
class UprightWorld(Similarity):
    """The rigid motion camera-frame world -> upright world, and how it was found.

    ``source``: "objects" (the objects' own ups, floor at their lowest point) or "ground_plane" (a
    plane of the point map under the objects); ``up``: the up direction in the camera-frame world;
    ``agreeing``: how many objects voted for it; ``ground_height``: the ground's z in the upright world
    (0 by construction); ``lowest_point``: the objects' lowest z in the upright world (0 for
    "objects", the objects' gap to the plane for "ground_plane")."""

    source: str = "objects"
    up: np.ndarray | None = None
    agreeing: int = 0
    ground_height: float = 0.0
    lowest_point: float = 0.0

    def describe(self) -> dict:
        """The ``up`` entry of scene.json."""
        return {"source": self.source, "ground_height": float(self.ground_height),
                "lowest_point": float(self.lowest_point), "objects_agreeing": int(self.agreeing)}


@dataclass
class GroundPlane:
    """A plane ``normal · x = height`` of the point map (camera frame), with its inlier share."""

    normal: np.ndarray
    height: float
    share: float


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-300)


def object_ups(placements: Sequence[Similarity]) -> np.ndarray:
    """(K, 3) unit up directions of the objects in the world the placements map into: R_k @ e_z."""
    return _unit(np.array([np.asarray(p.R, float)[:, 2] for p in placements]))


def _placed_vertices(placements: Sequence[Similarity], vertices: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for k, (p, v) in enumerate(zip(placements, vertices)):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.all(np.isfinite(v)):
            raise InputError(f"object {k}: vertices must be a non-empty, finite (V, 3) array, got shape {v.shape}")
        out.append(p.apply(v))
    return out


def _subsample(points: np.ndarray) -> np.ndarray:
    """At most MAX_VERTICES evenly spread rows: enough for the prior and the plane's support checks."""
    return points if len(points) <= MAX_VERTICES else points[np.linspace(0, len(points) - 1, MAX_VERTICES).astype(int)]


def camera_prior_cost(up: np.ndarray, world_points: np.ndarray) -> float:
    """How implausible the photo's camera is if `up` (camera frame) were up, in object votes.

    The camera sits at the origin looking along +z with the image's up along -y (OpenCV). Costs:
    roll (the horizon's tilt) beyond 30° (one vote per further 30°; weighed down as the camera looks
    straight up or down, where roll means little), pitch beyond +20° up or 75° down (a vote per 20°),
    and the camera below the lowest of `world_points` along `up` by more than a tenth of its distance
    to them (a vote per further fifth of that distance)."""
    u = _unit(np.asarray(up, float))
    x, down = float(u[0]), float(u[1])
    pitch = float(np.degrees(np.arcsin(np.clip(u[2], -1.0, 1.0))))
    side = float(np.hypot(x, down))
    roll = float(np.degrees(np.arctan2(x, -down)))
    cost = max(0.0, abs(roll) - 30.0) / 30.0 * min(1.0, side / 0.5)
    cost += max(0.0, pitch - 20.0) / 20.0 + max(0.0, -75.0 - pitch) / 20.0
    heights = world_points @ u
    dist = float(np.median(np.linalg.norm(world_points, axis=1)))
    camera_height = -float(heights.min())          # the camera (origin) above the lowest point
    if dist > 0:
        cost += max(0.0, -camera_height / dist - 0.1) / 0.2
    return cost


def level_rotation(up: np.ndarray) -> np.ndarray:
    """The rotation taking camera-frame `up` to +Z, with the camera's view (+z of the camera frame)
    along +Y and its right (+x) along +X as far as the tilt allows (rows: the new axes)."""
    u = _unit(np.asarray(up, float))
    forward = np.array([0.0, 0.0, 1.0])
    ahead = forward - (forward @ u) * u
    if np.linalg.norm(ahead) < 1e-6:      # looking straight down (or up): the image's up leads
        image_up = np.array([0.0, -1.0, 0.0])
        ahead = image_up - (image_up @ u) * u
    ahead = _unit(ahead)
    return np.stack([np.cross(ahead, u), ahead, u])


def _consensus(ups: np.ndarray, weights: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(up, agreeing mask): the candidate with the most agreeing weight less its camera cost, refined
    as the weighted mean of the objects agreeing with it."""
    cos_agree = np.cos(np.radians(AGREE_DEG))
    unit = float(np.median(weights[weights > 0])) if np.any(weights > 0) else 1.0
    best, best_score = None, -np.inf
    for cand in ups:
        agree = (ups @ cand) >= cos_agree
        mean = _unit((weights[agree, None] * ups[agree]).sum(0)) if weights[agree].sum() > 0 else cand
        score = float(weights[agree].sum()) - unit * camera_prior_cost(mean, points)
        if score > best_score + 1e-9:
            best, best_score = mean, score
    up = best
    for _ in range(3):   # re-select around the mean, then average again
        agree = (ups @ up) >= cos_agree
        if weights[agree].sum() <= 0:
            break
        up = _unit((weights[agree, None] * ups[agree]).sum(0))
    return up, (ups @ up) >= cos_agree


def _fit_plane(p: np.ndarray) -> tuple[np.ndarray, float]:
    c = p.mean(0)
    _, _, vt = np.linalg.svd(p - c, full_matrices=False)
    n = vt[2]
    return n, float(n @ c)


def find_ground_plane(points: np.ndarray, valid: np.ndarray | None, up: np.ndarray,
                      object_points: Sequence[np.ndarray], *, exclude: np.ndarray | None = None,
                      seed: int = 0, hypotheses: int = 400) -> GroundPlane | None:
    """The largest plane of a camera-frame point map that lies under the objects, or None.

    RANSAC (seed-fixed) over 3-pixel planes whose normal is within PLANE_MAX_TILT_DEG of `up`; a plane
    counts only when the objects stand on it: none of them reaches below it, and the lowest one
    touches it (both within 4% of the objects' extent plus the inlier distance). The inlier distance
    is 1% of the median depth (a monocular point map's depth error). The winner is refitted by least
    squares on its inliers (three rounds) and must hold PLANE_MIN_SHARE of the valid pixels."""
    pm = np.asarray(points, dtype=np.float64)
    if pm.ndim != 3 or pm.shape[2] != 3:
        raise InputError(f"point map must have shape (H, W, 3), got {pm.shape}")
    ok = np.isfinite(pm).all(-1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if exclude is not None:
        ok &= ~np.asarray(exclude, bool)
    p_all = pm[ok]
    if len(p_all) < 100:
        return None
    rng = np.random.default_rng(seed)
    p = p_all[rng.choice(len(p_all), size=min(len(p_all), 20000), replace=False)]
    u = _unit(np.asarray(up, float))
    thr = 0.01 * float(np.median(np.linalg.norm(p, axis=1)))
    obj = np.concatenate(list(object_points))
    extent = float(np.linalg.norm(np.ptp(obj, axis=0)))
    tol = 0.04 * extent + thr
    cos_tilt = np.cos(np.radians(PLANE_MAX_TILT_DEG))

    def supports(n: np.ndarray, h: float) -> bool:
        bottoms = np.array([float((o @ n).min()) for o in object_points]) - h
        return bool(bottoms.min() >= -tol and bottoms.min() <= tol)

    idx = rng.integers(0, len(p), size=(hypotheses, 3))
    a, b, c = p[idx[:, 0]], p[idx[:, 1]], p[idx[:, 2]]
    n = np.cross(b - a, c - a)
    good = np.linalg.norm(n, axis=1) > 1e-12
    n = _unit(n)
    n *= np.sign(n @ u)[:, None] + (n @ u == 0)[:, None]
    good &= (n @ u) >= cos_tilt
    if not good.any():
        return None
    n, a = n[good], a[good]
    h = (n * a).sum(1)
    counts = (np.abs(p @ n.T - h) < thr).sum(0)
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < PLANE_MIN_SHARE * len(p):
            return None
        nk, hk = n[k], float(h[k])
        if not supports(nk, hk):
            continue
        for _ in range(3):
            inl = np.abs(p @ nk - hk) < thr
            if inl.sum() < 3:
                break
            nk, hk = _fit_plane(p[inl])
            if nk @ u < 0:
                nk, hk = -nk, -hk
        inl = np.abs(p @ nk - hk) < thr
        share = float(inl.mean())
        if share >= PLANE_MIN_SHARE and nk @ u >= cos_tilt and supports(nk, hk):
            return GroundPlane(nk, hk, share)
    return None


def upright_world(placements: Sequence[Similarity], vertices: Sequence[Any], weights: Any = None, *,
                  points: Any = None, valid: Any = None, exclude: Any = None, seed: int = 0) -> UprightWorld:
    """The rigid motion (scale 1, det +1) from the camera-frame world to an upright one.

    `placements`: each object's object -> camera-frame similarity; `vertices`: each object's vertices in
    its own frame; `weights`: optional per-object confidence (>= 0). +Z becomes the robust consensus of
    the objects' own +Z axes (one object: its own up), the lowest point of the objects sits at z = 0,
    and their footprint is centred on the origin. With `points` (a camera-frame point map (H, W, 3),
    `valid` its mask, `exclude` pixels to leave out such as the objects'), a large plane under the
    objects refines up (its normal) and sets z = 0 (its height) instead.
    """
    if len(placements) == 0 or len(placements) != len(vertices):
        raise InputError(f"one placement per object is needed, got {len(placements)} placements "
                         f"and {len(vertices)} vertex arrays")
    w = np.ones(len(placements)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (len(placements),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InputError("weights must be finite, non-negative, one per object and not all zero")
    placed = _placed_vertices(placements, vertices)
    all_points = np.concatenate(placed)
    sparse = [_subsample(p) for p in placed]
    ups = object_ups(placements)
    up, agree = _consensus(ups, w, np.concatenate(sparse))
    source, plane = "objects", None
    if points is not None:
        plane = find_ground_plane(points, valid, up, sparse, exclude=exclude, seed=seed)
    if plane is not None:
        up, source = plane.normal, "ground_plane"
    R = level_rotation(up)
    level = all_points @ R.T
    floor = float(plane.height) if plane is not None else float(level[:, 2].min())
    lo, hi = level[:, :2].min(0), level[:, :2].max(0)
    t = -np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, floor])
    return UprightWorld(scale=1.0, R=R, t=t, source=source, up=up, agreeing=int(agree.sum()),
                        ground_height=0.0, lowest_point=float(level[:, 2].min()) - floor)


def stand_object(vertices: Any, scale: float = 1.0) -> Similarity:
    """Object mode's world: the object (upright in its own frame) scaled by `scale` (1, or meters per
    object unit with *Real size*), standing on z = 0 with its footprint centred on the origin."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise InputError(f"vertices must be a non-empty (V, 3) array, got shape {v.shape}")
    s = float(scale)
    if not (np.isfinite(s) and s > 0):
        raise InputError(f"scale must be positive, got {scale!r}")
    lo, hi = v.min(0), v.max(0)
    t = -s * np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, lo[2]])
    return Similarity(scale=s, R=np.eye(3), t=t)
