"""Photo loading and CUPID's preprocessing, exactly as the release's `ImageProcessor` does it.

The object comes from the photo's alpha (an RGBA cut-out), a given mask, or, for an opaque photo,
the background remover (`cupid.background`) run on the photo downsized to at most 1024 px. Both
network inputs are made as the release makes them (`ImageProcessor.crop_to_content`,
`ImageEncoder._prepare_tensor`), to the bit, so that a seed gives the release's result from the same
photo: the box of the pixels with alpha > 0.8·255 grown to a square 1.2× its longer extent, that crop
of the uint8 RGBA image Lanczos-resized by PIL to 518² (DINOv2) and 256² (the stage-2 conv head),
then RGB × alpha. `Crop.offset` and `Crop.size` are the release's crop parameters in the ORIGINAL
photo's pixels, for `CameraPose.de_crop` (see `pose_from_structure`, and `object_crop` for the half
pixel by which they differ from the pixels PIL takes).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from . import config
from .errors import CheckpointError, InputError
from .linear_images import read_linear_image

ImageSource = Any  # a path, bytes, a PIL image or an HxWx{1,3,4} array
Remover = Callable[[Image.Image], Image.Image]  # RGB photo -> RGBA cut-out (cupid.background.BackgroundRemover)


@dataclass
class Crop:
    """The square crop in photo pixels: top-left `offset` (x, y) and side `size`, as the release
    reports them (its CropParameters times the image's longer side), see `object_crop`."""

    offset: tuple[float, float]
    size: float

    def scale_to(self, side: int) -> float:
        """Photo pixels per crop-image pixel once the crop is resized to `side`."""
        return self.size / side


@dataclass
class Processed:
    """A photo ready for the networks."""

    photo: np.ndarray          # HxWx3 uint8, the original photo (orientation applied)
    alpha: np.ndarray          # HxW float32 in [0, 1], the object's mask in the photo (the remover's,
                               # resized back to the photo when it ran on a downsized copy)
    crop: Crop
    cond_image: torch.Tensor   # [3, 518, 518] premultiplied RGB in [0, 1]
    visual_image: torch.Tensor  # [3, 256, 256] premultiplied RGB in [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.shape[1], self.photo.shape[0]


def _open(source: ImageSource, what: str, name: str | None = None) -> Image.Image:
    """`source` opened as an image; errors name it as `what` plus the file's or upload's `name`."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr.astype(np.float32) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr.squeeze())
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), f"{Path(name).name} (upload)" if name else "(upload)"
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise InputError(f"{what} not found: {path}")
        data, name = path.read_bytes(), path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # EXR/HDR/float TIFF: as sRGB; anything else only with the documented decoders (never EPS's Ghostscript)
            img = read_linear_image(data) or Image.open(io.BytesIO(data), formats=config.IMAGE_FORMATS)
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
        detail = "it is truncated" if "truncat" in str(exc).lower() else (
            f"corrupt, truncated or not a {', '.join(config.IMAGE_FORMATS)} file")
        raise InputError(f"{what} {name} is not a readable image ({detail})") from None
    return img


DECODE_BAND_PIXELS = 1 << 20   # pixels converted at a time (a band of rows): a few MB whatever the photo


def _band_to_rgba(band: Image.Image, peak: float) -> np.ndarray:
    """One band of rows of any PIL mode -> [rows, W, 4] uint8; `peak` scales 16-bit and float pixels (it is
    the whole image's); a palette's transparency travels with the band (a crop keeps `info`)."""
    if band.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(band, dtype=np.float64)
        band = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif band.mode == "F":
        arr = np.asarray(band, dtype=np.float64)
        band = Image.fromarray(np.clip(arr * peak, 0, 255).astype(np.uint8), "L")
    return np.asarray(band.convert("RGBA"))


def _to_rgba(img: Image.Image) -> np.ndarray:
    """Any PIL mode (16-bit, greyscale, palette, CMYK, LA...) -> HxWx4 uint8, EXIF orientation applied.

    Memory budget: beyond the decoded image (PIL keeps 4 bytes a pixel for RGB) this holds the HxWx4
    result (4 bytes a pixel) and one band of `DECODE_BAND_PIXELS` pixels in each conversion's types;
    an EXIF rotation adds one more copy of the decoded image: at most 8 bytes a pixel, never the
    whole-image float64 and RGBA copies (a 64 MP photo once peaked at 5 GB)."""
    if img.getexif().get(0x0112, 1) != 1:   # exif_transpose copies the image even when it has nothing to turn
        img = ImageOps.exif_transpose(img)
    peak = 1.0
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        peak = 65535.0 if img.getextrema()[1] > 255 else 255.0
    elif img.mode == "F":
        peak = 255.0 if img.getextrema()[1] <= 1.0 else 1.0
    w, h = img.size
    out = np.empty((h, w, 4), np.uint8)
    rows = max(1, DECODE_BAND_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        out[y:y + rows] = _band_to_rgba(img.crop((0, y, w, min(h, y + rows))), peak)
    return out


def load_photo(source: ImageSource, name: str | None = None) -> np.ndarray:
    """The photo as HxWx4 uint8 (alpha 255 where the file has none); clear errors for bad files, which
    name an upload (bytes) by `name`, the file name its sender gave."""
    rgba = _to_rgba(_open(source, "photo", name))
    h, w = rgba.shape[:2]
    if min(w, h) < config.MIN_IMAGE_SIDE:
        raise InputError(f"the photo is {w}x{h} pixels; CUPID needs at least "
                         f"{config.MIN_IMAGE_SIDE} pixels on each side")
    return rgba


def load_mask(source: ImageSource, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """A mask image (alpha if it has one, else grey) as HxW float32 in [0, 1], sized like the photo."""
    img = _open(source, "mask", name)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        m = np.asarray(img.convert("RGBA"))[..., 3]
    else:
        m = np.asarray(_to_rgba(img)[..., :3].mean(axis=2))
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise InputError(f"the mask is {m.shape[1]}x{m.shape[0]} but the photo is {size[0]}x{size[1]}: "
                         f"they must be the same size")
    return (m.astype(np.float32) / 255.0).clip(0, 1)


def object_crop(alpha: np.ndarray, padding: float = config.CROP_PADDING) -> Crop | None:
    """The release's square crop around the object in a uint8 alpha (None when no pixel passes 0.8·255).

    Its box is the min and max pixel INDEX with alpha > 0.8·255 (max inclusive), its centre
    (min + max) / 2, its side int(max(w, h)·1.2) with w = max - min, and its box
    (centre - side // 2, centre + side // 2) on each axis, left unrounded.

    Where the release is half a pixel inconsistent, and what we do: PIL's crop rounds that box
    (round half to even), so when min + max is odd the pixels the networks see start half a pixel
    from the offset the release reports, and when the side is odd the crop is 2·(side // 2) pixels,
    one fewer than the side it reports. We follow the release to the letter: the networks see the
    pixels PIL takes (`crop_pixels`), and the camera is de-cropped with the release's unrounded offset
    and side, so our cameras are the release's (a bias of at most 0.5 px in the principal point and
    1/side in the focal length, which the release has too).
    """
    ys, xs = np.nonzero(alpha > config.ALPHA_THRESHOLD * 255)
    if xs.size == 0:
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    side = int(max(x1 - x0, y1 - y0) * padding)
    half = side // 2
    return Crop(offset=((x0 + x1) / 2 - half, (y0 + y1) / 2 - half), size=float(side))


def crop_pixels(rgba: np.ndarray, crop: Crop) -> Image.Image:
    """The crop of an HxWx4 uint8 image as PIL takes it (box rounded, transparent black outside)."""
    half = int(crop.size) // 2
    x0, y0 = crop.offset
    return Image.fromarray(rgba, "RGBA").crop((x0, y0, x0 + 2 * half, y0 + 2 * half))


def network_image(crop: Image.Image, side: int) -> torch.Tensor:
    """The RGBA crop Lanczos-resized to side² as uint8 (PIL resamples RGBA premultiplied, then
    un-premultiplies), THEN premultiplied in float: [3, side, side] RGB·alpha in [0, 1]."""
    rgba = np.asarray(crop.convert("RGBA").resize((side, side), Image.Resampling.LANCZOS))
    alpha = rgba[..., 3].astype(np.float32) / 255
    rgb = rgba[..., :3].astype(np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray((rgb * alpha[..., None]).transpose(2, 0, 1)))


def downsize(image: Image.Image, max_size: int = config.REMOVER_MAX_SIZE) -> Image.Image:
    """The release's resize before background removal: longer side at most `max_size`, each side
    int(side · max_size / longer side), Lanczos."""
    longest = max(image.size)
    if longest <= max_size:
        return image
    scale = max_size / longest
    return image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)


def _cut_out(rgba: np.ndarray, remover: Remover) -> tuple[np.ndarray, float]:
    """The opaque photo's RGB, downsized and cut out by the remover -> (RGBA cut-out, photo pixels per
    cut-out pixel). That scale is the ratio of the longer sides: the release's camera is normalised by
    the cut-out's longer side, so this keeps ours equal to the release's times the photo's longer side."""
    photo = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
    small = downsize(photo)
    cut = np.asarray(remover(small).convert("RGBA"))
    if cut.shape[:2] != (small.height, small.width):
        raise CheckpointError(f"the background remover returned a {cut.shape[1]}x{cut.shape[0]} image for a "
                              f"{small.width}x{small.height} photo")
    return cut, max(photo.size) / max(small.size)


EMPTY_OBJECT_MASK = ("the object mask is empty: the photo's alpha (or the mask) is above 80% nowhere; give an "
                     "RGBA cut-out of the object or a mask that covers it")


def preprocess(photo: ImageSource, mask: ImageSource | None = None, remover: Remover | None = None,
               check: Callable[[], None] | None = None) -> Processed:
    """Load the photo (and mask), find the object, crop around it and build both network inputs.

    The object is the mask if one is given, else the photo's alpha if it has any below 255, else
    what `remover` cuts out of the photo (as the release does; without a remover that is an error).
    A given mask replaces the photo's alpha (the release's `putalpha`), even when it covers everything
    (where the release would then run its remover). `check` (a cancel check) runs between the steps.
    """
    check = check or (lambda: None)
    rgba = load_photo(photo)
    check()
    size = (rgba.shape[1], rgba.shape[0])
    scale, removed = 1.0, False
    if mask is not None:
        alpha = np.round(load_mask(mask, size) * 255).astype(np.uint8)
        image = np.concatenate([rgba[..., :3], alpha[..., None]], axis=2)
    elif (rgba[..., 3] < 255).any():
        image = rgba
    elif remover is None:
        raise InputError("the photo has no transparent background: give an RGBA cut-out of the object, "
                         "or a mask (--mask) that selects it")
    else:
        image, scale = _cut_out(rgba, remover)
        removed = True
    check()
    crop = object_crop(image[..., 3])
    if crop is None:
        if removed:
            raise InputError("no object found in the photo; give a mask")
        raise InputError(EMPTY_OBJECT_MASK)
    if int(crop.size) // 2 == 0:
        raise InputError("the object is only a pixel or two across: too small to reconstruct")
    pixels = crop_pixels(image, crop)
    check()
    cond = network_image(pixels, config.DINO_SIZE)
    visual = network_image(pixels, config.VISUAL_COND_SIZE)
    alpha = image[..., 3]
    if alpha.shape != rgba.shape[:2]:
        alpha = np.asarray(Image.fromarray(alpha, "L").resize(size, Image.Resampling.BILINEAR))
    in_photo = Crop(offset=(crop.offset[0] * scale, crop.offset[1] * scale), size=crop.size * scale)
    return Processed(photo=np.ascontiguousarray(rgba[..., :3]), alpha=alpha.astype(np.float32) / 255,
                     crop=in_photo, cond_image=cond, visual_image=visual)
