"""One reconstruction on the backend (submit, wait, download), run by a worker thread; no bpy.

Threading rule: the worker only talks HTTP and touches files. Everything it learns reaches the UI
thread through one channel, a queue of :class:`Progress` snapshots ended by one :class:`Outcome`,
which the UI thread drains with :meth:`ReconstructJob.poll` (from a modal timer, or from a plain
loop in background mode). The other direction is one flag, :meth:`ReconstructJob.cancel`.

States are the server's own: queued, running, done, failed, cancelled (before the job reaches the
server it is "queued", with stages such as "starting backend" and "uploading").
"""
from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..backend_manager import BackendStartError
from ..client import BackendError, BackendUnavailable
from .bundle import SceneBuildError, find_bundle, restore_original_photo
from .upload import InputProblem, Upload

STATES = ("queued", "running", "done", "failed", "cancelled")
POLL_S = 0.25

Connect = Callable[[Callable[[], bool]], Any]  # should_cancel -> a CupidClient


class UserError(Exception):
    """A problem with the user's input or setup; reported as is."""


def describe_error(exc: BaseException) -> str:
    """One clear line for any error a job can meet."""
    if isinstance(exc, BackendError):
        return f"CUPID backend error ({exc.code or 'error'}): {exc.message or exc}"
    if isinstance(exc, BackendUnavailable):
        return f"CUPID backend unavailable: {exc}"
    if isinstance(exc, (UserError, InputProblem, BackendStartError, SceneBuildError)):
        return str(exc)
    if isinstance(exc, OSError):
        return f"CUPID could not write the result: {exc.strerror or exc} ({exc.filename or ''})"
    return f"CUPID reconstruction failed: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class JobRequest:
    """What is uploaded (photo and mask bytes, sampler settings) and where the result is kept."""

    upload: Upload
    mode: str
    seed: int
    steps: int
    results_root: Path


@dataclass(frozen=True)
class Progress:
    """Where the job stands: a server state, its stage and a fraction in [0, 1]."""

    state: str
    stage: str
    fraction: float
    device: str = ""    # the backend's device, once it answered


@dataclass(frozen=True)
class Outcome:
    """How the job ended: done (with the bundle directory), failed (with a message) or cancelled."""

    state: str
    bundle: Optional[Path] = None
    message: str = ""


class ReconstructJob:
    """Submit, wait for and download one reconstruction; :meth:`run` is the worker thread's body."""

    def __init__(self, connect: Connect, request: JobRequest) -> None:
        self._connect = connect
        self.request = request
        self._events: "queue.Queue[Progress | Outcome]" = queue.Queue()
        self._cancel = threading.Event()
        self._progress = Progress("queued", "starting backend", 0.0)
        self._outcome: Optional[Outcome] = None
        self._device = ""
        self.workdir: Optional[Path] = None   # the download, inside the results folder
        self.job_id: Optional[str] = None

    # -- the UI thread's side ------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def poll(self) -> tuple[Progress, Optional[Outcome]]:
        """Drain what the worker published: the latest progress, and the outcome once it ended."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return self._progress, self._outcome
            if isinstance(event, Outcome):
                self._outcome = event
            else:
                self._progress = event

    def cleanup(self) -> None:
        """Remove what is left of the download (a kept result was moved out of it first)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the worker thread's side --------------------------------------------------------------
    def _publish(self, state: str, stage: str, fraction: float) -> None:
        self._events.put(Progress(state, stage, min(1.0, max(0.0, fraction)), self._device))

    def _on_status(self, st: dict) -> None:
        state = str(st.get("state", ""))
        try:
            fraction = float(st.get("progress") or 0.0)
        except (TypeError, ValueError):
            fraction = 0.0
        self._publish(state, st.get("stage") or state, fraction)

    def run(self) -> None:
        """Never raises: every ending is one :class:`Outcome` on the queue."""
        try:
            outcome = self._run()
        except BaseException as exc:  # reported to the user on the UI thread
            outcome = Outcome("cancelled") if self.cancel_requested else Outcome("failed", message=describe_error(exc))
        self._events.put(outcome)

    def _run(self) -> Outcome:
        client = self._connect(self._cancel.is_set)
        if self.cancel_requested:
            return Outcome("cancelled")
        self._device = str(client.health().get("device") or "")
        self._publish("queued", "uploading", 0.0)
        r, up = self.request, self.request.upload
        self.job_id = client.submit(up.image, up.filename, mask_bytes=up.mask, mode=r.mode, seed=r.seed,
                                    steps=r.steps)
        st = client.wait(self.job_id, poll=POLL_S, on_progress=self._on_status, should_cancel=self._cancel.is_set)
        if st["state"] == "cancelled":
            return Outcome("cancelled")
        if st["state"] == "failed":
            err = st.get("error") if isinstance(st.get("error"), dict) else {}
            if err.get("code"):
                detail = err.get("message") or st.get("message")
                return Outcome("failed", message=f"CUPID backend error ({err['code']}): {detail}")
            return Outcome("failed", message=f"CUPID reconstruction failed: {st.get('message') or 'unknown error'}")
        self._publish("done", "downloading result", 1.0)
        r.results_root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=".incoming-", dir=r.results_root))
        bundle = find_bundle(client.result(self.job_id, self.workdir / "bundle"))
        if up.downscaled and up.original is not None:
            restore_original_photo(bundle, up.width, up.height, up.original, up.original_name)
        return Outcome("done", bundle=bundle)
