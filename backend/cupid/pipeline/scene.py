"""Scene mode: every object on its own, then all of them placed in one camera by a point map.

Each object gets its own occlusion-aware input (the photo with everything but that object blacked
out, cropped around it) and its own stage 1 + 2, hence its own 3D-2D pairs (voxel centre, uv in the
photo). MoGe predicts a point map of the whole photo in its camera frame; looking the point map up
at each pair's uv turns 3D-2D into 3D-3D, and a robust similarity (Umeyama) maps the object's frame
into that camera frame. The shared camera is MoGe's (its intrinsics, R = I, t = 0), so scene.json's
world is MoGe's camera frame and each object's transform is its similarity. No renderer is needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import config
from ..errors import CupidError, InputError
from ..export import ExportOptions, write_bundle
from ..geometry import CameraPose, voxel_centers
from ..preprocess import load_photo, preprocess
from ..scene.alignment import align_object, visible_points

Progress = Callable[[str, float], None]


def _masks(photo: np.ndarray, mask: Any) -> list[np.ndarray]:
    from ..scene.masks import load_object_masks, segment_automatic

    size = (photo.shape[1], photo.shape[0])
    if mask is None:
        masks = segment_automatic(photo)  # clear error when segment-anything or its weights are missing
    else:
        masks = load_object_masks(list(mask) if isinstance(mask, (list, tuple)) else mask, size)
    alphas = [np.asarray(a, dtype=np.float32) for a in masks.alphas]
    if not alphas:
        raise InputError("scene mode found no object in the masks")
    return alphas


def _moge(pipe: Any) -> Any:
    """The point-map model named by the model's pipeline.json (loaded once, kept on the pipeline)."""
    if getattr(pipe, "_moge", None) is None:
        from ..models.moge import load_moge

        name = pipe.extras.get("moge_model", config.MOGE_ID)
        local = Path(pipe.source) / name
        pipe._moge = load_moge(local if local.exists() else name, device=pipe.device)
    return pipe._moge


def _valid_intrinsics(K: np.ndarray, W: int, H: int) -> bool:
    f = K[0, 0]
    return bool(np.isfinite(K).all() and f > 0.1 * max(W, H) and f < 100 * max(W, H)
                and -W < K[0, 2] < 2 * W and -H < K[1, 2] < 2 * H)


# The objects' solved principal points replace the photo centre only when they agree with each other
# (within this share of the photo) and the centre lies clearly outside that agreement: a photo straight
# from a camera has its principal point at the centre, a cropped one does not, and one object's
# principal point alone is too loosely determined to move it.
PP_AGREEMENT = 0.03
PP_OFF_CENTRE = 0.02


def scene_principal_point(object_cameras: list[CameraPose], width: int, height: int) -> tuple[float, float] | None:
    """The principal point (uv) to give MoGe: the objects' median when at least two agree and it is
    off the photo centre, else None (MoGe's centred principal point)."""
    if len(object_cameras) < 2:
        return None
    pp = np.array([[c.K[0, 2] / width, c.K[1, 2] / height] for c in object_cameras], np.float64)
    if not np.isfinite(pp).all():
        return None
    med = np.median(pp, axis=0)
    if np.abs(pp - med).max() > PP_AGREEMENT or np.abs(med - 0.5).max() <= PP_OFF_CENTRE:
        return None
    if not ((0.1 <= med) & (med <= 0.9)).all():
        return None
    return float(med[0]), float(med[1])


def _point_map(pipe: Any, photo: np.ndarray, object_cameras: list[CameraPose]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MoGe's point map, validity and intrinsics (pixels). MoGe recovers its own focal length (with the
    objects' principal point where they agree on one, see :func:`scene_principal_point`); when that
    fails (a degenerate map), the objects' own solved focal (median) is given to MoGe instead."""
    H, W = photo.shape[:2]
    model = _moge(pipe)
    pp = scene_principal_point(object_cameras, W, H)
    geo = model.infer(photo, principal_point=pp)
    K = np.asarray(geo["intrinsics_px"], np.float64)
    if not _valid_intrinsics(K, W, H):
        f = float(np.median([c.K[0, 0] for c in object_cameras]))
        geo = model.infer(photo, fov_x=float(np.degrees(2 * np.arctan(W / (2 * f)))), principal_point=pp)
        K = np.asarray(geo["intrinsics_px"], np.float64)
        if not _valid_intrinsics(K, W, H):
            raise CupidError("the point-map model gave no usable camera for this photo", code="pointmap_failed")
    valid = np.asarray(geo["mask"], bool) & np.isfinite(np.asarray(geo["points"])).all(-1)
    if valid.mean() < 0.01:
        raise CupidError("the point-map model found almost no valid pixels in this photo", code="pointmap_failed")
    return np.asarray(geo["points"], np.float64), valid, K


def reconstruct_scene(pipe: Any, image: Any, mask: Any, *, seed: int, steps: int | None,
                      out_dir: str | os.PathLike, progress: Progress | None, should_cancel: Callable[[], bool] | None,
                      export: ExportOptions | None, pnp: str | None = None) -> Path:
    from .pipeline import _Job

    photo = load_photo(image)[..., :3]
    H, W = photo.shape[:2]
    alphas = _masks(photo, mask)
    n = len(alphas)
    specs, placements = [], []
    share = 0.85 / n
    for k, alpha in enumerate(alphas):
        job = _Job(progress, should_cancel, share=share, base=k * share)
        processed = preprocess(photo, mask=(alpha * 255).astype(np.uint8))
        spec, pose, pairs = pipe.reconstruct_object(processed, seed=seed + 7919 * k, steps=steps, job=job,
                                                    name=f"object_{k}", return_pairs=True, pnp=pnp)
        specs.append(spec)
        placements.append((pose, pairs))
    if progress:
        progress("pointmap", 0.86)
    points, valid, K_scene = _point_map(pipe, photo, [pose for pose, _ in placements])
    for k, (spec, (pose, (X, uv_photo, res))) in enumerate(zip(specs, placements)):
        seen = visible_points(X, pose.K, pose.R, pose.t, (W, H), res=res)
        try:
            sim = align_object(X, uv_photo, points, valid, object_mask=alphas[k] > 0.5, visible=seen, seed=seed)
        except InputError as exc:
            raise CupidError(f"object {k} could not be placed in the scene: {exc.message}",
                             code="alignment_failed") from None
        spec.transform = (float(sim.scale), sim.R, sim.t)
    if progress:
        progress("export", 0.95)
    camera = CameraPose(K_scene, np.eye(3), np.zeros(3), W, H)
    out = write_bundle(out_dir, photo, camera, specs, export or pipe.export_options())
    if progress:
        progress("export", 1.0)
    return out
