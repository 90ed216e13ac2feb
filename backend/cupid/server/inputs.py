"""A job's inputs: decoded once when the request arrives, checked there, spooled to disk to wait.

Everything that can be seen in the upload itself (an undecodable or tiny photo, a mask of the wrong
size, an empty mask or alpha, a scene label image that does not fit) is refused at submit with a 422,
before the job is queued; whether an opaque photo holds an object only the background remover can tell. The decoded pixels then wait on disk as `.npy` files, not in memory, and the
worker hands them to the pipeline as arrays, which it reads as it would the original files (a colour
mask whose channels differ: to within half a grey level).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from .. import config
from ..errors import InputError
from ..preprocess import EMPTY_OBJECT_MASK, load_mask, load_photo, object_crop
from .errors import DiskFull, is_disk_full


@dataclass
class JobInputs:
    """photo: HxWx4 uint8. mask: object mode HxW uint8 (255 = object); scene mode a label image
    [H, W] (labels 1..K, uint8/uint16) or one object's alpha [1, H, W] (uint8 ×255 when that is
    exact, else float32), see `cupid.scene.masks.scene_mask`; None when not given."""

    photo: np.ndarray
    mask: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.photo.nbytes + (0 if self.mask is None else self.mask.nbytes))

    @property
    def object_count(self) -> int:
        """Scene mode: the objects the mask holds (a label image's labels 1..K, else one per [H, W] plane)."""
        if self.mask is None:
            return 0
        return int(self.mask.max()) if self.mask.ndim == 2 else int(self.mask.shape[0])

    def pipeline_mask(self, mode: str) -> Any:
        """The mask as `CupidPipeline.reconstruct` takes it (scene mode: one array per object)."""
        if self.mask is None or mode != "scene" or self.mask.ndim == 2:
            return self.mask   # a scene's label image is read as labels (values below 128, or 16-bit)
        return list(self.mask)


def decode_inputs(image: bytes | Path, mask: bytes | Path | None, mode: str, image_name: str | None = None,
                  mask_name: str | None = None, max_objects: int | None = config.MAX_OBJECTS) -> JobInputs:
    """Decode and check an upload (or, for the CLI, files); raises InputError with the reason (answered as
    422 bad_input), naming an upload by the file name its sender gave. A scene's label image with more
    than `max_objects` objects is refused after counting them, before any per-object array exists."""
    if not image:
        raise InputError("the uploaded image is empty")
    photo = load_photo(image, image_name)
    size = (photo.shape[1], photo.shape[0])
    if mode == "scene":
        if mask is None:
            return JobInputs(photo)  # segmented on the worker (segment-anything)
        from ..scene.masks import scene_mask
        return JobInputs(photo, scene_mask(mask, size, max_objects))
    if mask is not None:
        alpha = np.rint(load_mask(mask, size, mask_name) * 255.0).astype(np.uint8)
        if object_crop(alpha) is None:
            raise InputError("the mask is empty: it is above 80% nowhere; send a mask that covers the object")
        return JobInputs(photo, alpha)
    if photo[..., 3].min() < 255 and object_crop(photo[..., 3]) is None:
        raise InputError(EMPTY_OBJECT_MASK)
    return JobInputs(photo)  # an opaque photo: the pipeline cuts the object out (only the model can tell)


def _save(path: Path, array: np.ndarray) -> None:
    """`np.save` through a plain file write: a full disk then raises ENOSPC (np.save's own fast
    path reports a short write without an errno)."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as fh:
        npformat.write_array_header_1_0(fh, npformat.header_data_from_array_1_0(array))
        fh.write(memoryview(array).cast("B"))


def spool(inputs: JobInputs, directory: Path) -> None:
    """Write the inputs under `directory` (created); on failure nothing is left there."""
    try:
        directory.mkdir(parents=True)
        _save(directory / "photo.npy", inputs.photo)
        if inputs.mask is not None:
            _save(directory / "mask.npy", inputs.mask)
    except BaseException as exc:
        remove(directory)
        if is_disk_full(exc):
            raise DiskFull(directory.parent) from None
        raise


def load(directory: Path) -> JobInputs:
    mask = directory / "mask.npy"
    return JobInputs(np.load(directory / "photo.npy"), np.load(mask) if mask.is_file() else None)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
