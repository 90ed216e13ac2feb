"""Object masks of a photo, and which pixels of an object its occluders own.

Masks come from the user (one label image where every non-zero label is an object, or one mask
image per object) or from segment-anything (`cupid.models.sam`, official checkpoints in our own
PyTorch): automatically, or from picks (a click or a box per object). They are kept as soft alpha in
[0, 1] because user masks are often anti-aliased; `binary` is alpha>0.5.

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

__all__ = ["ObjectMasks", "read_mask", "masks_from_label_image", "masks_from_images", "load_object_masks",
           "occluder_mask", "label_png", "segment_automatic", "segment_prompts", "check_prompts",
           "parse_point", "parse_box", "parse_prompts"]

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
        """[H, W]: 0 background, k where object k (counted from 1) has the largest alpha (> 0.5);
        uint8 for up to 255 objects, else uint16."""
        best = np.argmax(self.alphas, axis=0)
        top = np.take_along_axis(self.alphas, best[None], 0)[0]
        return np.where(top > 0.5, best + 1, 0).astype(np.uint8 if len(self) <= 255 else np.uint16)


def label_png(masks: ObjectMasks) -> bytes:
    """The label image as PNG bytes (8-bit grey, 16-bit above 255 objects): what `load_object_masks`
    reads back as the same objects."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(masks.label_image()).save(buf, format="PNG")  # uint8 → "L", uint16 → "I;16"
    return buf.getvalue()


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
    if a.ndim == 3 and a.shape[2] in (3, 4) and np.all(a[..., :3] == a[..., :1]):   # grey stored as RGB
        a = a[..., 0]
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


def _solid_values(a: np.ndarray) -> np.ndarray:
    """The values of a 2-D array that fill at least one solid 3x3 patch (a pixel whose 8 neighbours
    all share its value): a label's region has one, the thin bands anti-aliasing or feathering put
    between a mask's object and its background do not."""
    if a.shape[0] < 3 or a.shape[1] < 3:
        return np.unique(a)
    h, w = a.shape
    centre = a[1:-1, 1:-1]
    solid = np.ones(centre.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                solid &= a[dy:h - 2 + dy, dx:w - 2 + dx] == centre
    return np.unique(centre[solid])


def _looks_like_labels(src: MaskSource) -> bool:
    """Is a single file a label image (one object per distinct non-zero value or colour) rather than
    one object's mask? The rule (README, *Mask*):

    - several distinct non-grey colours: labels;
    - small integer labels (8-bit: all < 128; 16/32-bit: all < 32768): labels;
    - one non-zero grey value (a 0/255 mask): one object either way, read as a mask;
    - otherwise grey values are labels when every one of them fills a solid patch somewhere (at least
      3x3 pixels of only that value), as 128 and 255 painted with a hard brush do; an anti-aliased or
      feathered mask has values that only ever form thin bands along its edge, and stays one object.
    """
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
    if int(nz.max()) < limit:
        return True
    if nz.size == 1:
        return False
    return bool(np.isin(nz, _solid_values(a)).all())


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


# ---------------------------------------------------------------- segment-anything

def _need_model(model: Any) -> Any:
    if model is None:
        raise CheckpointError("segment-anything masks need a loaded SAM model (cupid.models.sam.load_sam); "
                              "or give a mask or label image")
    return model


def _is_background(mask: np.ndarray, band: float = 0.01, side_share: float = 0.1) -> bool:
    """A proposal is background (wall, floor, table top, sky) when it reaches three or four sides of the
    photo, or covers more than half of its border. Sides are bands 1% of the short side wide (at
    least 2 px), since upscaled masks often stop a pixel short of the edge; a side counts when the
    mask covers more than `side_share` of its band."""
    h, w = mask.shape
    b = max(2, int(round(band * min(h, w))))
    sides = [mask[:b].any(0), mask[-b:].any(0), mask[:, :b].any(1), mask[:, -b:].any(1)]
    shares = [float(s.mean()) for s in sides]
    border = sum(float(s.sum()) for s in sides) / (2 * (h + w))
    return sum(s > side_share for s in shares) >= 3 or border > 0.5


def _select_masks(segs: list[np.ndarray], scores: list[float], min_area: int, max_area: int,
                  max_objects: int | None, contain: float = 0.8) -> list[int]:
    """Whole objects among SAM's proposals: area within bounds, not background (:func:`_is_background`),
    largest first, dropping proposals mostly inside one already kept (parts of an object)."""
    order = sorted(range(len(segs)), key=lambda i: (-int(segs[i].sum()), -scores[i]))
    kept: list[int] = []
    for i in order:
        area = int(segs[i].sum())
        if area < min_area or area > max_area or _is_background(segs[i]):
            continue
        if any((segs[i] & segs[j]).sum() > contain * area for j in kept):
            continue
        kept.append(i)
        if max_objects is not None and len(kept) >= max_objects:
            break
    return sorted(kept, key=lambda i: -int(segs[i].sum()))


def segment_automatic(image: Any, model: Any = None, *, min_area_fraction: float = 0.005,
                      max_area_fraction: float = 0.9, max_objects: int | None = 16, points_per_side: int = 16,
                      **generator_kwargs: Any) -> ObjectMasks:
    """Object masks by SAM's automatic generator, keeping whole objects and dropping parts and background.

    `model` is a loaded :class:`cupid.models.sam.SamModel` (this module sits below the networks);
    `generator_kwargs` override the settings of :func:`cupid.models.sam_amg.generate_proposals`. A 16×16
    point grid rather than SAM's 32×32: every prompt costs the mask decoder ~3 GFLOP (seconds per batch on
    a CPU), and an object large enough to keep (`min_area_fraction`) already spans a grid cell of 1/16 of
    the photo's side; the finer grid adds mostly parts."""
    photo = _read_photo(image)
    props = _need_model(model).automatic(photo, points_per_side=points_per_side, **generator_kwargs)
    h, w = photo.shape[:2]
    segs = [p.mask for p in props]
    keep = _select_masks(segs, [p.predicted_iou for p in props], int(min_area_fraction * h * w),
                         int(max_area_fraction * h * w), max_objects)
    if not keep:
        raise InputError("segment-anything found no object in the photo; pick objects with points or boxes, "
                         "or give a mask or label image")
    return ObjectMasks(np.stack([segs[i] for i in keep]).astype(np.float32),
                       [f"object_{n}" for n in range(len(keep))])


def _prompt_array(values: Any, width: int, what: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numbers, got {values!r}") from exc
    if a.ndim != 2 or a.shape[1] != width or not np.all(np.isfinite(a)):
        raise InputError(f"{what} must be a list of [{', '.join(['x', 'y'] if width == 2 else ['x0', 'y0', 'x1', 'y1'])}]"
                         f" in photo pixels, got {values!r}")
    return a


def check_prompts(points: Sequence[Sequence[float]] | None, boxes: Sequence[Sequence[float]] | None,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated points [P, 2] and boxes [B, 4] in photo pixels for a photo of (W, H); at least one
    prompt, all inside the photo, boxes with x0 < x1 and y0 < y1."""
    w, h = size
    pts = _prompt_array(points, 2, "points") if points is not None and len(points) else np.zeros((0, 2))
    bxs = _prompt_array(boxes, 4, "boxes") if boxes is not None and len(boxes) else np.zeros((0, 4))
    if len(pts) + len(bxs) == 0:
        raise InputError("no object picked: give at least one point or box")
    for k, (x, y) in enumerate(pts):
        if not (0 <= x <= w and 0 <= y <= h):
            raise InputError(f"point {k + 1} ({x:g}, {y:g}) is outside the {w}x{h} photo")
    for k, (x0, y0, x1, y1) in enumerate(bxs):
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise InputError(f"box {k + 1} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not x0 < x1, y0 < y1 inside "
                             f"the {w}x{h} photo")
    return pts, bxs


def _numbers(text: str, n: int, flag: str, form: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n or not all(np.isfinite(values)):
        raise InputError(f"{flag} expects {form} in photo pixels, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float]:
    """`--point X,Y` → (x, y)."""
    return _numbers(text, 2, "--point", "X,Y")  # type: ignore[return-value]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`--box X0,Y0,X1,Y1` → (x0, y0, x1, y1)."""
    return _numbers(text, 4, "--box", "X0,Y0,X1,Y1")  # type: ignore[return-value]


def parse_prompts(field: str | bytes | dict | None) -> tuple[list[list[float]], list[list[float]]] | None:
    """The service's `prompts` form field, JSON `{"points": [[x, y], ...], "boxes": [[x0, y0, x1, y1], ...]}`,
    → (points, boxes); None or an empty field means automatic masks. Positions are checked against the
    photo by :func:`check_prompts`."""
    import json

    if field is None or (isinstance(field, (str, bytes)) and not field.strip()):
        return None
    if isinstance(field, (str, bytes)):
        try:
            field = json.loads(field)
        except ValueError as exc:
            raise InputError(f"prompts must be JSON like {{\"points\": [[x, y]], \"boxes\": [[x0, y0, x1, y1]]}}: "
                             f"{exc}") from exc
    if not isinstance(field, dict):
        raise InputError("prompts must be a JSON object with \"points\" and/or \"boxes\"")
    unknown = sorted(set(field) - {"points", "boxes"})
    if unknown:
        raise InputError(f"unknown prompt kind(s) {', '.join(map(repr, unknown))}: use \"points\" and \"boxes\"")
    out = []
    for key, width in (("points", 2), ("boxes", 4)):
        items = field.get(key) or []
        if not isinstance(items, list):
            raise InputError(f"prompts.{key} must be a list")
        out.append(_prompt_array(items, width, key).tolist() if items else [])
    if not out[0] and not out[1]:
        raise InputError("no object picked: prompts has no point and no box")
    return out[0], out[1]


def segment_prompts(image: Any, points: Sequence[Sequence[float]] | None = None,
                    boxes: Sequence[Sequence[float]] | None = None, model: Any = None) -> ObjectMasks:
    """One object per prompt, in photo pixels: each point [x, y] (a click on the object), then each box
    [x0, y0, x1, y1] (a drag around it), by `model`, a loaded :class:`cupid.models.sam.SamModel`. A point
    keeps the best of SAM's three answers by predicted IoU (a click is ambiguous: part, object, group);
    a box asks for SAM's single answer. Prompts are checked before the model runs."""
    photo = _read_photo(image)
    h, w = photo.shape[:2]
    pts, bxs = check_prompts(points, boxes, (w, h))
    sam = _need_model(model)
    embedded = sam.embed(photo)
    alphas, names = [], []
    if len(pts):
        alphas += list(sam.segment(embedded, pts[:, None, :], np.ones((len(pts), 1)), multimask=True)[0])
        names += [f"point_{k + 1}" for k in range(len(pts))]
    if len(bxs):
        alphas += list(sam.segment(embedded, boxes=bxs, multimask=False)[0])
        names += [f"box_{k + 1}" for k in range(len(bxs))]
    for a, name in zip(alphas, names):
        if not a.any():
            raise InputError(f"segment-anything found no object at {name.replace('_', ' ')}; click inside the "
                             "object or drag a box around it")
    return ObjectMasks(np.stack(alphas).astype(np.float32), names)
