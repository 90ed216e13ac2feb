"""Progress and cancellation of one job, as one small type.

A job reports (stage, fraction of the whole job in 0..1) to its caller's callback and checks the
caller's cancel flag at every stage boundary and between sampler steps. A scene job runs several
objects, each given its share of the bar through `part`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled

ProgressCallback = Callable[[str, float], None]
CancelCheck = Callable[[], bool]

# Share of one object's work each stage takes, used to map stage progress to 0..1.
STAGE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("condition", 0.05), ("structure", 0.35), ("pose", 0.02), ("latent", 0.38), ("decode", 0.1), ("export", 0.1))


@dataclass
class Progress:
    """Where a job stands. `share`/`base`: the slice of the whole bar this (object's) work covers."""

    callback: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    share: float = 1.0
    base: float = 0.0

    def check(self) -> None:
        """Raise Cancelled when the caller asked to stop."""
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("the job was cancelled")

    last: float = 0.0   # the last position reported on the whole bar

    def _emit(self, stage: str, position: float) -> None:
        self.last = min(1.0, position)
        if self.callback is not None:
            self.callback(stage, self.last)

    def report(self, stage: str, fraction: float = 0.0) -> None:
        """Stage `stage` is `fraction` done; also the place every stage boundary checks for a cancel."""
        self.check()
        done = 0.0
        for name, weight in STAGE_WEIGHTS:
            if name == stage:
                done += weight * min(max(fraction, 0.0), 1.0)
                break
            done += weight
        self._emit(stage, self.base + self.share * done)

    def mark(self, stage: str, overall: float) -> None:
        """Report a job-level stage (a scene's point map, its export) at an absolute position of the bar."""
        self.check()
        self._emit(stage, self.base + self.share * overall)

    def remainder(self) -> ProgressCallback:
        """A (stage, fraction) callback that fills the rest of the bar from the last position, for the
        work after inference (writing the bundle)."""
        start = self.last

        def callback(stage: str, fraction: float) -> None:
            self.check()
            self._emit(stage, start + (1.0 - start) * min(max(fraction, 0.0), 1.0))
        return callback

    def part(self, index: int, count: int, span: float = 1.0) -> "Progress":
        """The progress of item `index` of `count` equal parts of the first `span` of this bar."""
        share = self.share * span / count
        return Progress(self.callback, self.should_cancel, share=share, base=self.base + index * share)
