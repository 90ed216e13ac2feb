"""Object masks of a photo, and which pixels of an object its occluders own.

Masks come from the user (one label image where every non-zero label is an object, or one mask
image per object) or from segment-anything (optional extra, imported only when asked for). They
are kept as soft alpha in [0, 1] because user masks are often anti-aliased; `binary` is alpha>0.5.

CUPID reconstructs object k from a square crop around it in which only k is visible: the photo's
alpha channel is k's mask, so background and the other objects (its occluders) are black after the
RGB·alpha premultiplication that feeds DINOv2. The crop is centred on the box of confident pixels
(alpha > 0.8) with side 1.2× the box's longer edge (`cupid.preprocess` takes that crop).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CheckpointError, InputError

__all__ = ["ObjectMasks", "read_mask", "masks_from_label_image", "masks_from_images",
           "load_object_masks", "occluder_mask", "segment_automatic",
           "segment_prompts", "SAM_CHECKPOINT_ENV"]

SAM_CHECKPOINT_ENV = "CUPID_SAM_CHECKPOINT"
MaskSource = Any  # path | bytes | PIL.Image | np.ndarray


@dataclass
class ObjectMasks:
    """Soft masks `alphas` float32 [K, H, W] in [0, 1] of one photo, with a name per object."""

    alphas: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        a = np.asarray(self.alphas, dtype=np.float32)
        if a.ndim != 3:
            raise InputError(f"object masks must be [K, H, W], got shape {a.shape}")
        if len(self.names) != a.shape[0]:
            raise InputError(f"{a.shape[0]} masks but {len(self.names)} names")
        self.alphas = np.clip(a, 0.0, 1.0)

    def __len__(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the photo the masks belong to."""
        return int(self.alphas.shape[2]), int(self.alphas.shape[1])

    @property
    def binary(self) -> np.ndarray:
        return self.alphas > 0.5

    def label_image(self) -> np.ndarray:
        """uint16 [H, W]: 0 background, k+1 where object k has the largest alpha (> 0.5)."""
        best = np.argmax(self.alphas, axis=0)
        top = np.take_along_axis(self.alphas, best[None], 0)[0]
        return np.where(top > 0.5, best + 1, 0).astype(np.uint16)


# ---------------------------------------------------------------- reading user masks

def _describe(src: MaskSource, index: int | None = None) -> str:
    name = f"mask {index}" if index is not None else "mask"
    if isinstance(src, (str, os.PathLike)):
        return f"{name} ({Path(src).name})"
    return name


def _open_image(src: MaskSource, what: str):
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src
    try:
        if isinstance(src, (bytes, bytearray)):
            img = Image.open(io.BytesIO(src))
        elif isinstance(src, (str, os.PathLike)):
            if not Path(src).is_file():
                raise InputError(f"{what}: file {src} does not exist")
            img = Image.open(src)
        else:
            raise InputError(f"{what}: expected an image file, bytes, a PIL image or an array, got {type(src).__name__}")
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{what}: not a readable image ({exc})") from exc


def _as_array(src: MaskSource, what: str) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    try:
        import torch
        if isinstance(src, torch.Tensor):
            return src.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    img = _open_image(src, what)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3]
        if alpha.min() != alpha.max():  # a real alpha channel carries the mask (CUPID's convention)
            return alpha
        return rgba[..., :3]
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1", "P"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


def read_mask(src: MaskSource, what: str = "mask") -> np.ndarray:
    """One object's mask as float32 alpha [H, W] in [0, 1].

    RGBA images use their alpha channel; grey images their value (8-bit scaled by 255, 16-bit by
    65535); RGB images their brightest channel; bool/float arrays are taken as they are.
    """
    a = _as_array(src, what)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].max(axis=2)
    if a.ndim != 2:
        raise InputError(f"{what} must be a single-channel image, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.integer):
        return (a > 0).astype(np.float32) if a.max(initial=0) <= 1 else a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} holds non-finite values")
    return np.clip(a, 0.0, 1.0)


def _check_size(shape: tuple[int, int], image_size: Sequence[int] | None, what: str,
                ref_name: str = "the photo") -> None:
    if image_size is None:
        return
    w, h = int(image_size[0]), int(image_size[1])
    if shape != (h, w):
        raise InputError(f"{what} is {shape[1]}x{shape[0]} pixels but {ref_name} is {w}x{h}; "
                         "masks must have exactly the photo's size")


def _check_not_empty(alpha: np.ndarray, what: str, min_pixels: int) -> None:
    n = int((alpha > 0.5).sum())
    if n == 0:
        raise InputError(f"{what} is empty: no pixel is set (masks mark the object white/opaque on black/transparent)")
    if n < min_pixels:
        raise InputError(f"{what} covers only {n} pixel(s); an object needs at least {min_pixels}")


def masks_from_images(sources: Sequence[MaskSource], image_size: Sequence[int] | None = None,
                      names: Sequence[str] | None = None, min_pixels: int = 16) -> ObjectMasks:
    """One mask image per object; all must match the photo's (W, H) and none may be empty."""
    if len(sources) == 0:
        raise InputError("no mask given: pass at least one mask image")
    alphas, out_names = [], []
    for i, src in enumerate(sources):
        what = _describe(src, i)
        a = read_mask(src, what)
        if image_size is not None:
            _check_size(a.shape, image_size, what)
        elif alphas:
            _check_size(a.shape, (alphas[0].shape[1], alphas[0].shape[0]), what, _describe(sources[0], 0))
        _check_not_empty(a, what, min_pixels)
        alphas.append(a)
        if names is not None:
            out_names.append(str(names[i]))
        elif isinstance(src, (str, os.PathLike)):
            out_names.append(Path(src).stem)
        else:
            out_names.append(f"object_{i}")
    return ObjectMasks(np.stack(alphas), out_names)


def _labels(src: MaskSource) -> tuple[np.ndarray, bool]:
    """Integer label array and whether it encodes 24-bit colours."""
    a = _as_array(src, "label image")
    if a.ndim == 3 and a.shape[2] in (3, 4):  # colour-coded labels: each distinct non-black colour
        rgb = a[..., :3].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], True
    if a.ndim != 2:
        raise InputError(f"label image must be a single-channel or colour image, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64), False
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise InputError("label image must hold integer labels (0 = background)")
    return a.astype(np.int64), False


def masks_from_label_image(src: MaskSource, image_size: Sequence[int] | None = None,
                           min_pixels: int = 16) -> ObjectMasks:
    """Split a label image (0 = background, every other value or colour one object) into masks,
    ordered by label value."""
    lab, colour = _labels(src)
    _check_size(lab.shape, image_size, "label image")
    values, counts = np.unique(lab[lab != 0], return_counts=True)
    if values.size == 0:
        raise InputError("label image is empty: every pixel is 0 (background); label objects with 1, 2, ...")
    small = [f"{int(v)} ({int(c)} px)" for v, c in zip(values, counts) if c < min_pixels]
    if small:
        raise InputError(f"label image objects too small (need {min_pixels} pixels): {', '.join(small)}")
    alphas = np.stack([(lab == v).astype(np.float32) for v in values])
    names = [f"label_{int(v):06x}" if colour else f"label_{int(v)}" for v in values]
    return ObjectMasks(alphas, names)


def _looks_like_labels(src: MaskSource) -> bool:
    """A single file is a label image when it holds small integer labels (8-bit: all < 128; 16/32-bit:
    all < 32768) or several distinct non-grey colours, rather than a white-on-black/alpha mask."""
    a = _as_array(src, "mask")
    if a.ndim == 3:
        rgb = a[..., :3].reshape(-1, 3)
        if np.all(rgb == rgb[:, :1]):  # grey stored as RGB
            a = a[..., 0]
        else:
            colours = np.unique(rgb, axis=0)
            return int((colours.max(axis=1) > 0).sum()) >= 2
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        return False
    nz = np.unique(a[a != 0])
    if nz.size == 0:
        return False
    limit = 128 if a.dtype == np.uint8 else 32768
    return int(nz.max()) < limit


def load_object_masks(sources: MaskSource | Sequence[MaskSource], image_size: Sequence[int] | None = None,
                      kind: str = "auto", min_pixels: int = 16) -> ObjectMasks:
    """Masks from user files: kind 'labels' (one label image), 'masks' (one image per object) or
    'auto' (several files -> masks; one file -> label image if it holds small integer labels or
    several colours, else a single object mask)."""
    single = not isinstance(sources, (list, tuple))
    items = [sources] if single else list(sources)
    if kind not in ("auto", "labels", "masks"):
        raise InputError(f"mask kind must be 'auto', 'labels' or 'masks', got {kind!r}")
    if kind == "labels" or (kind == "auto" and len(items) == 1 and _looks_like_labels(items[0])):
        if len(items) != 1:
            raise InputError(f"a label image is one file, got {len(items)}")
        return masks_from_label_image(items[0], image_size, min_pixels)
    return masks_from_images(items, image_size, min_pixels=min_pixels)


# ---------------------------------------------------------------- occlusion

def _read_photo(image: Any) -> np.ndarray:
    from PIL import Image
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        image = _open_image(image, "photo")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"photo must be an HxWx3 image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise InputError(f"photo must be uint8 or float in [0, 1], got {a.dtype}")
    return a


def occluder_mask(masks: ObjectMasks, index: int) -> np.ndarray:
    """bool [H, W]: pixels another object owns, i.e. where some other mask beats object `index`'s alpha
    and is itself set (> 0.5)."""
    if not 0 <= index < len(masks):
        raise InputError(f"object index {index} out of range (there are {len(masks)} masks)")
    if len(masks) == 1:
        return np.zeros(masks.alphas.shape[1:], dtype=bool)
    others = np.delete(masks.alphas, index, axis=0).max(axis=0)
    return (others > 0.5) & (others >= masks.alphas[index])


# ---------------------------------------------------------------- segment-anything (optional)

_SAM_TYPES = ("vit_h", "vit_l", "vit_b")


def _sam_model(checkpoint: str | os.PathLike | None, model_type: str | None, device: str):
    ckpt = checkpoint or os.environ.get(SAM_CHECKPOINT_ENV)
    if not ckpt:
        raise CheckpointError("automatic masks need a segment-anything checkpoint (e.g. sam_vit_h_4b8939.pth): "
                              f"pass its path or set {SAM_CHECKPOINT_ENV}; or give your own mask/label image")
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise CheckpointError(f"segment-anything checkpoint {path} does not exist; download it from the "
                              "segment-anything release or give your own mask/label image")
    if model_type is None:
        model_type = next((t for t in _SAM_TYPES if t in path.name), None)
        if model_type is None:
            raise CheckpointError(f"cannot tell the SAM model type from {path.name}; pass model_type "
                                  f"({', '.join(_SAM_TYPES)})")
    if model_type not in _SAM_TYPES:
        raise CheckpointError(f"unknown SAM model type {model_type!r} (use {', '.join(_SAM_TYPES)})")
    try:
        import segment_anything as sam_pkg
    except Exception as exc:
        raise CheckpointError("automatic masks need the optional package segment-anything (and a torchvision "
                              "matching your torch), which could not be imported "
                              f"({type(exc).__name__}: {exc}); install it or give your own mask/label image") from exc
    try:
        model = sam_pkg.sam_model_registry[model_type](checkpoint=str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot load segment-anything checkpoint {path.name} as {model_type}: "
                              f"{type(exc).__name__}: {exc}") from exc
    model.to(device)
    return sam_pkg, model


def _select_masks(segs: list[np.ndarray], scores: list[float], min_area: int, max_area: int,
                  max_objects: int | None, contain: float = 0.8) -> list[int]:
    """Whole objects among SAM's proposals: area within bounds, largest first, dropping proposals
    mostly inside one already kept (parts of an object)."""
    order = sorted(range(len(segs)), key=lambda i: (-int(segs[i].sum()), -scores[i]))
    kept: list[int] = []
    for i in order:
        area = int(segs[i].sum())
        if area < min_area or area > max_area:
            continue
        if any((segs[i] & segs[j]).sum() > contain * area for j in kept):
            continue
        kept.append(i)
        if max_objects is not None and len(kept) >= max_objects:
            break
    return sorted(kept, key=lambda i: -int(segs[i].sum()))


def segment_automatic(image: Any, checkpoint: str | os.PathLike | None = None, model_type: str | None = None,
                      device: str = "cpu", min_area_fraction: float = 0.005, max_area_fraction: float = 0.9,
                      max_objects: int | None = 16, **generator_kwargs: Any) -> ObjectMasks:
    """Object masks by SAM's automatic generator (whole objects kept, parts and background dropped)."""
    photo = _read_photo(image)
    sam_pkg, model = _sam_model(checkpoint, model_type, device)
    gen = sam_pkg.SamAutomaticMaskGenerator(model, **generator_kwargs)
    props = gen.generate(photo)
    h, w = photo.shape[:2]
    segs = [np.asarray(p["segmentation"], dtype=bool) for p in props]
    scores = [float(p.get("predicted_iou", 0.0)) for p in props]
    keep = _select_masks(segs, scores, int(min_area_fraction * h * w), int(max_area_fraction * h * w), max_objects)
    if not keep:
        raise InputError("segment-anything found no object in the photo; give a mask or label image instead")
    return ObjectMasks(np.stack([segs[i] for i in keep]).astype(np.float32),
                       [f"object_{n}" for n in range(len(keep))])


def segment_prompts(image: Any, *, points: Sequence[Sequence[Sequence[float]]] | None = None,
                    point_labels: Sequence[Sequence[int]] | None = None,
                    boxes: Sequence[Sequence[float]] | None = None, checkpoint: str | os.PathLike | None = None,
                    model_type: str | None = None, device: str = "cpu") -> ObjectMasks:
    """One mask per object from SAM prompts in photo pixels: `points[k]` a list of (x, y) with
    `point_labels[k]` (1 object, 0 background), and/or `boxes[k]` = (x0, y0, x1, y1)."""
    photo = _read_photo(image)
    h, w = photo.shape[:2]
    n = max(len(points or []), len(boxes or []))
    if n == 0:
        raise InputError("segment_prompts needs points or boxes (one entry per object)")
    if points is not None and boxes is not None and len(points) != len(boxes):
        raise InputError(f"{len(points)} point prompts but {len(boxes)} boxes: give one of each per object")
    if points is not None and (point_labels is None or len(point_labels) != len(points)):
        raise InputError("point_labels must give a label list for every object's points")
    for k in range(n):
        if boxes is not None:
            b = np.asarray(boxes[k], dtype=float)
            if b.shape != (4,) or not (0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h):
                raise InputError(f"box {k} {b.tolist()} is not (x0, y0, x1, y1) inside the {w}x{h} photo")
        if points is not None:
            p = np.asarray(points[k], dtype=float).reshape(-1, 2)
            if len(p) != len(point_labels[k]) or len(p) == 0:  # type: ignore[index]
                raise InputError(f"object {k}: {len(p)} points but {len(point_labels[k])} labels")  # type: ignore[index]
            if np.any(p < 0) or np.any(p[:, 0] > w) or np.any(p[:, 1] > h):
                raise InputError(f"object {k}: points outside the {w}x{h} photo")
    sam_pkg, model = _sam_model(checkpoint, model_type, device)
    pred = sam_pkg.SamPredictor(model)
    pred.set_image(photo)
    alphas = []
    for k in range(n):
        kw: dict[str, Any] = {"multimask_output": True}
        if points is not None:
            kw["point_coords"] = np.asarray(points[k], dtype=np.float32).reshape(-1, 2)
            kw["point_labels"] = np.asarray(point_labels[k], dtype=np.int64)  # type: ignore[index]
        if boxes is not None:
            kw["box"] = np.asarray(boxes[k], dtype=np.float32)
        segs, scores, _ = pred.predict(**kw)
        best = np.asarray(segs[int(np.argmax(scores))], dtype=bool)
        if not best.any():
            raise InputError(f"segment-anything returned an empty mask for object {k}; adjust its prompt")
        alphas.append(best.astype(np.float32))
    return ObjectMasks(np.stack(alphas), [f"object_{k}" for k in range(n)])
