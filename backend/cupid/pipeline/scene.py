"""Scene mode's own steps: object masks, the point map of the whole photo, and each object's placement.

Each object gets its own occlusion-aware input (the photo with everything but that object blacked
out, cropped around it) and its own stage 1 + 2, hence its own 3D-2D pairs (voxel centre, uv in the
photo). MoGe predicts a point map of the whole photo in its camera frame; looking the point map up
at each pair's uv turns 3D-2D into 3D-3D, and a robust similarity (Umeyama) maps the object's frame
into that camera frame. The shared camera is MoGe's (its intrinsics, R = I, t = 0), so the world is
MoGe's camera frame and each object's placement is its similarity. No renderer is needed.
`CupidPipeline` runs these steps; nothing here knows the pipeline.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CupidError, InputError
from ..geometry import CameraPose
from ..reconstruction import ReconstructedObject
from ..scene.alignment import align_object, visible_points
from ..scene.masks import (MaskCrop, ObjectMasks, check_prompts, exclusive_crops, label_crops, load_kind,
                           load_object_masks, renumbered_labels, segment_automatic, segment_prompts)

Prompts = tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]   # (points [[x, y]], boxes [[x0, y0, x1, y1]])
SCENE_OBJECTS_SPAN = 0.85  # share of a scene job's progress bar its objects take (then point map, export)


def object_masks(photo: np.ndarray, mask: Any = None, prompts: Prompts | None = None,
                 segmenter: Callable[[], Any] | None = None) -> ObjectMasks:
    """The objects of a scene: from `mask` (a label image or a list of mask images), else from
    `prompts` (points, boxes) given to the segmentation model, else that model's automatic masks.
    `segmenter()` returns the loaded model (called only when one is needed)."""
    size = (photo.shape[1], photo.shape[0])
    if mask is not None:
        return load_object_masks(list(mask) if isinstance(mask, (list, tuple)) else mask, size)
    if prompts is not None:
        points, boxes = prompts
        check_prompts(points, boxes, size)   # refused before the model loads
        return segment_prompts(photo, points=points, boxes=boxes, model=segmenter() if segmenter else None)
    return segment_automatic(photo, segmenter() if segmenter else None)


def object_alphas(photo: np.ndarray, mask: Any = None, prompts: Prompts | None = None,
                  segmenter: Callable[[], Any] | None = None) -> list[MaskCrop]:
    """One alpha per object (see `object_masks`), each without the pixels another object owns (its
    occluders), kept as a bounding-box crop (`np.asarray(crop)`: the float [H, W] alpha). A label image
    as an array (a server job's) is cut into crops directly: no [K, H, W] stack is ever made of it."""
    size = (photo.shape[1], photo.shape[0])
    if isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype in (np.uint8, np.uint16) \
            and load_kind(mask) == "labels":
        crops = label_crops(renumbered_labels(mask, size)[0])
    else:
        masks = object_masks(photo, mask, prompts, segmenter)
        crops = exclusive_crops(masks) if len(masks) else []
    if not crops:
        raise InputError("scene mode found no object in the photo: give a label image or pick the objects")
    return crops


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


def scene_principal_point(object_cameras: Sequence[CameraPose], width: int, height: int) -> tuple[float, float] | None:
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


def point_map(model: Any, photo: np.ndarray,
              object_cameras: Sequence[CameraPose]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The point-map model's points [H, W, 3], validity [H, W] and intrinsics (pixels). MoGe recovers its
    own focal length (with the objects' principal point where they agree on one, see
    :func:`scene_principal_point`); when that fails (a degenerate map), the objects' own solved focal
    (median) is given to it instead."""
    H, W = photo.shape[:2]
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


def align_to_point_map(obj: ReconstructedObject, alpha: np.ndarray, points: np.ndarray, valid: np.ndarray, *,
                       seed: int, index: int = 0) -> Any:
    """One object's similarity (object -> point-map camera frame) from its visible pairs and the point map;
    CupidError `alignment_failed` when it cannot be placed."""
    H, W = points.shape[:2]
    pose, pairs = obj.camera, obj.pairs
    if pose is None or pairs is None:
        raise CupidError(f"object {index} has no camera or 3D-2D pairs to place it with", code="alignment_failed")
    seen = visible_points(pairs.points, pose.K, pose.R, pose.t, (W, H), res=pairs.res)
    try:
        return align_object(pairs.points, pairs.uv, points, valid, object_mask=np.asarray(alpha) > 0.5,
                            visible=seen, seed=seed)
    except InputError as exc:
        raise CupidError(f"object {index} could not be placed in the scene: {exc.message}",
                         code="alignment_failed") from None


def place_objects(objects: Sequence[ReconstructedObject], alphas: Sequence[np.ndarray], points: np.ndarray,
                  valid: np.ndarray, *, seed: int) -> None:
    """Set each object's placement (object -> point-map camera frame) from its pairs and the point map."""
    for k, obj in enumerate(objects):
        obj.placement = align_to_point_map(obj, alphas[k], points, valid, seed=seed, index=k)
