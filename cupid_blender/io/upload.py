"""What to send the backend for a photo and its mask, decided without bpy.

The backend sees an object only through its square crop (1.2 × the object's box) resized to 518²
for DINOv2, so a photo much larger than that is sent as a downscaled copy: small enough for the
backend's upload limit, never so small that the crop drops below 518 px. The camera it returns is
in the copy's pixels; :func:`cupid_blender.io.bundle.restore_original_photo` puts it back into the
photo's own pixels. Masks are sent as what they mean: one grey channel (object mode) or the label
colours (scene mode), at the uploaded photo's size. Problems the backend would only find after
loading the model (an empty mask, an empty label image) are reported here, in the backend's words
and with its ``bad_input`` prefix. An opaque photo without a mask goes up as it is: in object mode the
backend cuts the object out itself.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .orientation import TURNS_AXES
from .imaging import has_real_alpha, mask_values, png_bytes, resample_area, resample_nearest, to_uint8

MODEL_SIDE = 518        # the side of the object crop DINOv2 sees (backend config.DINO_SIZE)
CROP_PADDING = 1.2      # crop side = 1.2 × the object's box (backend config.CROP_PADDING)
ALPHA_THRESHOLD = 0.8   # mask values above it make the object's box (backend config.ALPHA_THRESHOLD)
MIN_LONG_SIDE = 1024    # a downscaled copy keeps at least this long side (overlay, scene point map)
MAX_UPLOAD_PIXELS = 12_000_000   # always downscaled above: 12 MP RGB is 36 MB, under the 64 MB limit
MAX_FILE_BYTES = 48 * 1024 * 1024  # a larger file is re-encoded rather than sent as it is
KEEP_FULL_SIZE = 0.8    # a photo needing less reduction than this is sent at full size
BACKEND_FORMATS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")  # files the backend decodes
BAD_INPUT = "CUPID backend error (bad_input): "


class InputProblem(Exception):
    """The photo or mask cannot be used; the message is the report (with the backend's prefix)."""


@dataclass(frozen=True)
class Picture:
    """An input image as read on Blender's main thread."""

    name: str                        # what the artist knows it by (file or datablock name)
    stem: str                        # what results are named after
    filename: str                    # the name to upload it under
    pixels: Optional[np.ndarray]     # float32 [H, W, 4], top row first, display (sRGB) values; None: undecodable
    data: Optional[bytes] = None     # the file's own bytes, when it is an unmodified file
    orientation: int = 1             # the file's EXIF orientation (the pixels are already turned upright)


def picture_stem(name: str) -> str:
    """What a result is named after, from a file or datablock name: without Blender's ".001" (the
    same image loaded twice) and without an image file's extension ("astronaut.jpg.001" -> "astronaut")."""
    return os.path.splitext(re.sub(r"\.\d{3}$", "", name))[0] or name


@dataclass(frozen=True)
class Upload:
    """The bytes to send, the photo's own size and the size sent."""

    image: bytes
    filename: str
    mask: Optional[bytes]
    width: int = 0                  # the photo as the artist has it (0: not decoded here)
    height: int = 0
    upload_width: int = 0
    upload_height: int = 0
    original: Optional[bytes] = None  # the full-size photo for the result folder, when a copy was sent
    original_name: str = ""

    @property
    def downscaled(self) -> bool:
        return (self.upload_width, self.upload_height) != (self.width, self.height)


def _bad(message: str) -> InputProblem:
    return InputProblem(BAD_INPUT + message)


def crop_side(alpha: np.ndarray) -> Optional[int]:
    """Side of the backend's square crop around the pixels above the threshold (None: no pixel)."""
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if xs.size == 0:
        return None
    box = max(int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min()))
    return max(int(round(box * CROP_PADDING)), 8)


def upload_scale(width: int, height: int, crop: Optional[int], keep_detail: bool = False) -> float:
    """How much to shrink the photo: enough that the crop is MODEL_SIDE (never under MIN_LONG_SIDE
    on the long side), and always under MAX_UPLOAD_PIXELS; 1.0 when that would gain little.
    `keep_detail` (the photo texture: the backend paints the photo's own pixels onto the object)
    sends the photo at full size, up to MAX_UPLOAD_PIXELS."""
    scale = 1.0
    if crop is not None and not keep_detail:
        scale = min(1.0, max(MODEL_SIDE / crop, MIN_LONG_SIDE / max(width, height)))
        if scale > KEEP_FULL_SIZE:
            scale = 1.0
    return min(scale, math.sqrt(MAX_UPLOAD_PIXELS / (width * height)))


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(w, h) about `scale` × the photo, keeping its exact aspect ratio when a nearby size allows
    (then one factor maps the copy's pixels back to the photo's on both axes)."""
    if scale >= 1.0:
        return width, height
    g = math.gcd(width, height)
    n = max(1, round(scale * g))
    if abs(n * width // g - scale * width) <= 0.02 * scale * width:
        return n * width // g, n * height // g
    return max(1, round(scale * width)), max(1, round(scale * height))


def _photo_png(px: np.ndarray) -> bytes:
    """8-bit PNG of display-referred pixels: RGB when fully opaque, else RGBA."""
    return png_bytes(to_uint8(px[..., :3] if px[..., 3].min() >= 1.0 else px))


def _object_mask(photo: np.ndarray, mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The object's [H, W] mask (given, or the photo's alpha); None for an opaque photo without a
    mask, which the backend cuts out itself (as CUPID's release does, with rembg's u2net)."""
    if mask is None:
        alpha = photo[..., 3]
        return None if alpha.min() >= 1.0 else alpha
    return mask_values(mask)


def _scene_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 label image ([H, W] grey or [H, W, 3] colours) of a scene-mode mask."""
    labels = to_uint8(mask[..., 3] if has_real_alpha(mask) else mask[..., :3])
    if labels.ndim == 3 and (labels == labels[..., :1]).all():
        labels = labels[..., 0]
    if not labels.any():
        raise _bad("label image is empty: every pixel is 0 (background); label objects with 1, 2, ...")
    return labels


def prepare_upload(photo: Picture, mask: Optional[Picture], mode: str, keep_detail: bool = False) -> Upload:
    """The upload for a photo (and mask) in 'object' or 'scene' mode; raises InputProblem.
    `keep_detail`: the photo at full size (up to 12 MP), for the photo texture (see `upload_scale`)."""
    mask_px = mask.pixels if mask is not None else None
    if mask is not None and mask_px is None:
        raise _bad(f"the mask {mask.name!r} is not a readable image")
    if photo.pixels is None:  # Blender cannot decode it: the backend judges the file itself
        if photo.data is None:
            raise _bad(f"the photo {photo.name!r} is not a readable image")
        mask_bytes = None
        if mask_px is not None:
            mask_bytes = png_bytes(to_uint8(mask_values(mask_px)) if mode == "object" else _scene_mask(mask_px))
        return Upload(photo.data, photo.filename, mask_bytes)
    px = photo.pixels
    H, W = px.shape[:2]
    if mask_px is not None and mask_px.shape[:2] != (H, W):
        turned = photo.orientation in TURNS_AXES
        raise _bad(f"the mask is {mask_px.shape[1]}x{mask_px.shape[0]} but the photo is {W}x{H}"
                   + (f" upright (its EXIF orientation turns the {H}x{W} pixels Blender shows)" if turned else "")
                   + ": they must be the same size"
                   + ("; paint the mask on the upright photo (the result's camera background)" if turned else ""))
    if mode == "object":
        selection = _object_mask(px, mask_px)
        crop = crop_side(selection) if selection is not None else None
        if selection is not None and crop is None:
            raise _bad("the object mask is empty: the photo's alpha (or the mask) selects no pixel; give an "
                       "RGBA cut-out of the object or a mask that covers it")
        labels = None
    else:
        selection, crop = None, None
        labels = _scene_mask(mask_px) if mask_px is not None else None
    w, h = scaled_size(W, H, upload_scale(W, H, crop, keep_detail))
    ext = os.path.splitext(photo.filename)[1].lower()
    readable = photo.data is not None and ext in BACKEND_FORMATS   # the file itself is a photo the backend reads
    if (w, h) == (W, H):
        send_file = readable and len(photo.data) <= MAX_FILE_BYTES
        image, name = (photo.data, photo.filename) if send_file else (_photo_png(px), f"{photo.stem}.png")
        original, original_name = None, ""
    else:
        image, name = _photo_png(resample_area(px, w, h)), f"{photo.stem}.png"
        original, original_name = ((photo.data, f"photo_original{ext}") if readable
                                   else (_photo_png(px), "photo_original.png"))
    mask_bytes = None
    if selection is not None and mask_px is not None:
        mask_bytes = png_bytes(to_uint8(resample_area(selection, w, h) if (w, h) != (W, H) else selection))
    elif labels is not None:
        mask_bytes = png_bytes(resample_nearest(labels, w, h) if (w, h) != (W, H) else labels)
    return Upload(image, name, mask_bytes, W, H, w, h, original, original_name)

