"""Photo loading and TRELLIS/CUPID preprocessing, keeping the crop so K can go back to the photo.

The object comes from the photo's alpha (an RGBA cut-out) or a given mask. Both network inputs are
made as CUPID's release makes them (`ImageProcessor.crop_to_content`, `ImageEncoder._prepare_tensor`),
to the bit, so that a seed gives the release's result from the same photo: the box of the pixels with
alpha > 0.8 (first to last pixel), a square side of int(1.2 × its longer extent) rounded down to even,
centred on the box, its corner rounded as PIL rounds a crop box; that RGBA crop Lanczos-resized by PIL
(which resamples premultiplied) to 518² for DINOv2 and 256² for the stage-2 conv head, then RGB × alpha.
`Crop.offset` and `Crop.size` are that crop's true place in the photo, in photo pixels, for
`CameraPose.de_crop` (the release's own de-crop uses the box before rounding and the odd side).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import config
from .errors import InputError

ImageSource = Any  # a path, bytes, a PIL image or an HxWx{1,3,4} array


@dataclass
class Crop:
    """The square crop in photo pixels: top-left `offset` (x, y) and side `size`."""

    offset: tuple[float, float]
    size: float

    def scale_to(self, side: int) -> float:
        """Photo pixels per crop-image pixel once the crop is resized to `side`."""
        return self.size / side


@dataclass
class Processed:
    """A photo ready for the networks."""

    photo: np.ndarray          # HxWx3 uint8, the original photo (orientation applied)
    alpha: np.ndarray          # HxW float32 in [0, 1], the object's mask in the photo
    crop: Crop
    cond_image: torch.Tensor   # [3, 518, 518] premultiplied RGB in [0, 1]
    visual_image: torch.Tensor  # [3, 256, 256] premultiplied RGB in [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.shape[1], self.photo.shape[0]


def _open(source: ImageSource, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr.astype(np.float32) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr.squeeze())
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "(upload)"
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise InputError(f"{what} not found: {path}")
        data, name = path.read_bytes(), path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > config.MAX_IMAGE_PIXELS:
                raise InputError(f"{what} {name} is too large: {w}x{h} pixels, the limit is "
                                 f"{config.MAX_IMAGE_PIXELS // 1_000_000} megapixels")
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{what} {name} is too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        detail = "it is truncated" if "truncat" in str(exc).lower() else "corrupt, truncated or not an image file"
        raise InputError(f"{what} {name} is not a readable image ({detail})") from None
    return img


def _to_rgba(img: Image.Image) -> np.ndarray:
    """Any PIL mode (16-bit, greyscale, palette, CMYK, LA...) -> HxWx4 uint8, EXIF orientation applied."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGBA"))


def load_photo(source: ImageSource) -> np.ndarray:
    """The photo as HxWx4 uint8 (alpha 255 where the file has none); clear errors for bad files."""
    rgba = _to_rgba(_open(source, "photo"))
    h, w = rgba.shape[:2]
    if min(w, h) < config.MIN_IMAGE_SIDE:
        raise InputError(f"the photo is {w}x{h} pixels; CUPID needs at least "
                         f"{config.MIN_IMAGE_SIDE} pixels on each side")
    return rgba


def load_mask(source: ImageSource, size: tuple[int, int]) -> np.ndarray:
    """A mask image (alpha if it has one, else grey) as HxW float32 in [0, 1], sized like the photo."""
    img = _open(source, "mask")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        m = np.asarray(img.convert("RGBA"))[..., 3]
    else:
        m = np.asarray(_to_rgba(img)[..., :3].mean(axis=2))
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise InputError(f"the mask is {m.shape[1]}x{m.shape[0]} but the photo is {size[0]}x{size[1]}: "
                         f"they must be the same size")
    return (m.astype(np.float32) / 255.0).clip(0, 1)


def _alpha_u8(alpha: np.ndarray) -> np.ndarray:
    """The mask as the 8-bit alpha channel the release's PIL image carries."""
    return np.clip(np.rint(np.asarray(alpha, np.float64) * 255.0), 0, 255).astype(np.uint8)


def object_crop(alpha: np.ndarray, padding: float = config.CROP_PADDING) -> Crop:
    """The release's square crop around the object's box (8-bit alpha > 0.8·255), in photo pixels."""
    ys, xs = np.nonzero(_alpha_u8(alpha) > config.ALPHA_THRESHOLD * 255)
    if xs.size == 0:
        raise InputError("the object mask is empty: the photo's alpha (or the mask) selects no pixel; give an "
                         "RGBA cut-out of the object or a mask that covers it")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    half = max(int(max(x1 - x0, y1 - y0) * padding) // 2, 4)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    # PIL rounds each box coordinate with round(); both edges share the fraction, so the side stays 2·half
    return Crop(offset=(float(round(cx - half)), float(round(cy - half))), size=float(2 * half))


def crop_resize(rgba: np.ndarray, crop: Crop, side: int) -> torch.Tensor:
    """The crop of an HxWx4 uint8 image (transparent black outside the photo), resized to side² by PIL's
    Lanczos on RGBA, as RGB × alpha -> [3, side, side] float32 (the release's `_prepare_tensor`)."""
    x0, y0 = (int(v) for v in crop.offset)
    box = (x0, y0, x0 + int(crop.size), y0 + int(crop.size))
    img = Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8), "RGBA").crop(box)
    small = np.asarray(img.resize((side, side), Image.Resampling.LANCZOS))
    alpha = torch.from_numpy(small[..., 3].copy()).float() / 255.0
    rgb = torch.from_numpy(small[..., :3].copy()).permute(2, 0, 1).float() / 255.0
    return rgb * alpha.unsqueeze(0)


def preprocess(photo: ImageSource, mask: ImageSource | None = None) -> Processed:
    """Load the photo (and mask), crop around the object and build both network inputs."""
    rgba = load_photo(photo)
    size = (rgba.shape[1], rgba.shape[0])
    if mask is not None:
        alpha = load_mask(mask, size)
    else:
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        if np.all(alpha >= 1.0):
            raise InputError("the photo has no transparent background: give an RGBA cut-out of the object, "
                             "or a mask (--mask) that selects it")
    crop = object_crop(alpha)
    cut = np.concatenate([rgba[..., :3], _alpha_u8(alpha)[..., None]], axis=-1)
    cond = crop_resize(cut, crop, config.DINO_SIZE)
    visual = crop_resize(cut, crop, config.VISUAL_COND_SIZE)
    return Processed(photo=np.ascontiguousarray(rgba[..., :3]), alpha=alpha, crop=crop, cond_image=cond,
                     visual_image=visual)
