"""One segmentation on the backend (``POST /v1/segment``), run by a worker thread; no bpy.

The photo goes up as a reconstruction would send it (:func:`.upload.prepare_upload`: the file
itself, or a downscaled copy of a huge photo, with the prompts scaled alike), and the label PNG
comes back. The UI thread starts :meth:`SegmentJob.run` in a thread and looks at
:meth:`SegmentJob.outcome` until it is there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .job import Connect, describe_error
from .picks import Pick, prompts
from .upload import Picture, Upload, prepare_upload


@dataclass(frozen=True)
class SegmentRequest:
    """The photo as uploaded, the prompts in its pixels (None: automatic / object mode), the mode."""

    upload: Upload
    prompts: Optional[dict]
    mode: str   # "scene" or "object"


@dataclass(frozen=True)
class SegmentOutcome:
    """The label PNG (0 = background, k = object k), or the one-line reason there is none."""

    labels_png: Optional[bytes] = None
    message: str = ""


def segment_request(photo: Picture, picks: Sequence[Pick], mode: str) -> SegmentRequest:
    """What to send for a photo and its picks (scene mode) or for its cut-out (object mode). An empty
    pick list in scene mode is refused here (PickProblem), before anything is sent."""
    if photo.pixels is None:
        raise ValueError(f"Blender cannot read the photo {photo.name!r}, so its masks could not be shown")
    H, W = photo.pixels.shape[:2]
    found = prompts(picks, W, H) if mode == "scene" else None
    upload = prepare_upload(photo, None, mode)
    if found is not None and upload.downscaled:
        found = prompts(picks, W, H, (upload.upload_width / W, upload.upload_height / H))
    return SegmentRequest(upload, found, mode)


class SegmentJob:
    """Send one segmentation; :meth:`run` is the worker thread's body and never raises."""

    def __init__(self, connect: Connect, request: SegmentRequest) -> None:
        self._connect = connect
        self.request = request
        self._cancel = threading.Event()
        self._outcome: Optional[SegmentOutcome] = None

    def cancel(self) -> None:
        self._cancel.set()

    def outcome(self) -> Optional[SegmentOutcome]:
        return self._outcome

    def run(self) -> None:
        r = self.request
        try:
            client: Any = self._connect(self._cancel.is_set)
            png = client.segment(r.upload.image, r.upload.filename, r.prompts, r.mode)
            self._outcome = SegmentOutcome(png)
        except BaseException as exc:  # reported to the user on the UI thread
            self._outcome = SegmentOutcome(message=describe_error(exc))
