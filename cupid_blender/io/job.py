"""One reconstruction on the backend (submit, wait, download), run by a worker thread; no bpy.

Threading rule: the worker only talks HTTP and touches files. Everything it learns reaches the UI
thread through one channel, a queue of :class:`Progress` snapshots (and, once stage 1 is done, one
:class:`PreviewReady`) ended by one :class:`Outcome`, which the UI thread drains with
:meth:`ReconstructJob.poll` and :meth:`ReconstructJob.take_preview` (from a modal timer, or from a
plain loop in background mode). The other direction is one flag, :meth:`ReconstructJob.cancel`.

A job is a new reconstruction (an :class:`Upload`) or a refine of a finished one (a :class:`Refine`:
its job id and the camera the artist set, in the pixels the backend saw).

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
from typing import Any, Callable, Iterable, Optional, Sequence

from ..backend_manager import BackendStartError
from ..client import BackendError, BackendUnavailable
from .bundle import SceneBuildError, find_bundle, restore_original_photo
from .preview import PreviewData, read_preview
from .settings import make_results_root
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
class Restore:
    """The photo the artist has, when the backend saw a downscaled copy: the result is put back
    into its pixels (:func:`restore_original_photo`)."""

    width: int
    height: int
    photo: bytes
    name: str


@dataclass(frozen=True)
class Refine:
    """A refine of a finished job: the camera ({"K", "R", "t"}) in the pixels of the photo the backend has."""

    from_job: str
    camera: dict
    restore: Optional[Restore] = None


@dataclass(frozen=True)
class JobRequest:
    """What is uploaded (photo and mask bytes, sampler settings) or refined, and where the result is kept."""

    upload: Optional[Upload]
    mode: str
    seed: int
    steps: int
    results_root: Path
    refine: Optional[Refine] = None
    real_size: Optional[bool] = None   # object mode: False sends real_size=false; None: the backend's default
    photo_texture: bool = True      # the backend projects the photo's own pixels onto the textures

    @property
    def restore(self) -> Optional[Restore]:
        if self.refine is not None:
            return self.refine.restore
        up = self.upload
        if up is not None and up.downscaled and up.original is not None:
            return Restore(up.width, up.height, up.original, up.original_name)
        return None


@dataclass(frozen=True)
class Progress:
    """Where the job stands: a server state, its stage and a fraction in [0, 1]."""

    state: str
    stage: str
    fraction: float
    device: str = ""    # the backend's device, once it answered
    dtype: str = ""     # and the precision its networks run in


@dataclass(frozen=True)
class PreviewReady:
    """Stage 1 is done: its camera (in the artist's photo's pixels) and voxels, and that photo's file."""

    preview: PreviewData
    photo: Path


@dataclass(frozen=True)
class Outcome:
    """How the job ended: done (with the bundle directory), failed (with a message) or cancelled."""

    state: str
    bundle: Optional[Path] = None
    message: str = ""


def superseded_jobs(request: JobRequest, referenced: Iterable[str]) -> list[str]:
    """Backend jobs this run leaves without a result to refine from: a refine's source once the refined
    result is built (its collection refines from the new job now), unless another result still names it
    in `referenced` (the jobs the file's CUPID results name)."""
    if request.refine is None or request.refine.from_job in set(referenced):
        return []
    return [request.refine.from_job]


class ReconstructJob:
    """Submit, wait for and download one reconstruction; :meth:`run` is the worker thread's body."""

    def __init__(self, connect: Connect, request: JobRequest, backend_up: bool = False) -> None:
        """`backend_up`: the backend already runs (the first stage shown is then the upload or the
        refine, not "starting backend")."""
        self._connect = connect
        self.request = request
        self._events: "queue.Queue[Progress | PreviewReady | Outcome]" = queue.Queue()
        self._cancel = threading.Event()
        self._progress = Progress("queued", self._sending() if backend_up else "starting backend", 0.0)
        self._outcome: Optional[Outcome] = None
        self._preview: Optional[PreviewReady] = None
        self._preview_asked = False
        self._client: Any = None
        self._device = ""
        self._dtype = ""
        self.workdir: Optional[Path] = None   # the download, inside the results folder
        self.job_id: Optional[str] = None

    def _sending(self) -> str:
        return "refining" if self.request.refine is not None else "uploading"

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
                if event.state == "done" and self.cancel_requested:
                    # the result came in as the artist cancelled: it is not imported, and the
                    # backend forgets it (off this thread: the UI does not wait on the network)
                    event = Outcome("cancelled")
                    threading.Thread(target=self._forget, name="cupid-forget", daemon=True).start()
                self._outcome = event
            elif isinstance(event, PreviewReady):
                self._preview = event
            else:
                self._progress = event

    def take_preview(self) -> Optional[PreviewReady]:
        """The preview, once (after a :meth:`poll` that drained it)."""
        preview, self._preview = self._preview, None
        return preview

    def release(self, job_ids: Sequence[str]) -> None:
        """Let the backend free jobs no result refines from any more (their stage 1 kept in its memory):
        a DELETE each on a daemon thread, through this job's client; failures are ignored (the backend
        forgets them after its time-to-live anyway)."""
        client, ids = self._client, [j for j in job_ids if j]
        if client is None or not ids:
            return

        def free() -> None:
            for job_id in ids:
                try:
                    client.cancel(job_id)
                except Exception:  # noqa: BLE001 - freeing is a courtesy to the backend, never an error
                    pass

        threading.Thread(target=free, name="cupid-release", daemon=True).start()

    def cleanup(self) -> None:
        """Remove what is left of the download (a kept result was moved out of it first)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the worker thread's side --------------------------------------------------------------
    def _publish(self, state: str, stage: str, fraction: float) -> None:
        self._events.put(Progress(state, stage, min(1.0, max(0.0, fraction)), self._device, self._dtype))

    def _on_status(self, st: dict) -> None:
        state = str(st.get("state", ""))
        try:
            fraction = float(st.get("progress") or 0.0)
        except (TypeError, ValueError):
            fraction = 0.0
        self._publish(state, st.get("stage") or state, fraction)
        if st.get("preview") and not self._preview_asked and self.request.refine is None:
            self._preview_asked = True
            self._fetch_preview()

    def _incoming(self) -> Path:
        """The job's own folder inside the results folder (made on first use)."""
        if self.workdir is None:
            make_results_root(self.request.results_root, Path.home())
            self.workdir = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.request.results_root))
        return self.workdir

    def _fetch_preview(self) -> None:
        """Fetch stage 1's preview once and hand it to the UI thread with the photo it belongs to. A
        preview is a courtesy: when it cannot be had, the job goes on without one."""
        up = self.request.upload
        try:
            preview = read_preview(self._client.preview(self.job_id))
            if up.downscaled and up.original is not None:
                photo_bytes, name = up.original, up.original_name
                preview = preview.in_pixels_of(up.width, up.height)
            else:
                photo_bytes, name = up.image, "preview_" + Path(up.filename).name
            photo = self._incoming() / name
            photo.write_bytes(photo_bytes)
        except (BackendError, BackendUnavailable, ValueError, OSError) as exc:
            print(f"CUPID: no preview of job {self.job_id}: {exc}", flush=True)
            return
        self._events.put(PreviewReady(preview, photo))

    def run(self) -> None:
        """Never raises: every ending is one :class:`Outcome` on the queue."""
        try:
            outcome = self._run()
        except BaseException as exc:  # reported to the user on the UI thread
            outcome = Outcome("cancelled") if self.cancel_requested else Outcome("failed", message=describe_error(exc))
        self._events.put(outcome)

    def _run(self) -> Outcome:
        client = self._client = self._connect(self._cancel.is_set)
        if self.cancel_requested:
            return Outcome("cancelled")
        health = client.health()
        self._device = str(health.get("device") or "")
        self._dtype = str(health.get("dtype") or "")
        r, up = self.request, self.request.upload
        if r.refine is not None:
            self._publish("queued", self._sending(), 0.0)
            try:
                self.job_id = client.refine(r.refine.from_job, r.refine.camera, steps=r.steps,
                                            photo_texture=r.photo_texture)
            except BackendError as exc:
                if exc.status not in (404, 410):
                    raise
                raise UserError(f"CUPID: the backend no longer keeps the reconstruction this result came from "
                                f"(job {r.refine.from_job}: it was restarted, or the result expired): run the "
                                f"reconstruction again") from None
        else:
            self._publish("queued", self._sending(), 0.0)
            self.job_id = client.submit(up.image, up.filename, mask_bytes=up.mask, mode=r.mode, seed=r.seed,
                                        steps=r.steps, real_size=r.real_size if r.mode == "object" else None,
                                        photo_texture=r.photo_texture)
        st = client.wait(self.job_id, poll=POLL_S, on_progress=self._on_status, should_cancel=self._cancel.is_set)
        if st["state"] == "cancelled" or self.cancel_requested:
            # nothing of it is wanted (a `done` that raced the cancel included): the backend may
            # free what it keeps of it (its result, its stage 1)
            self._forget()
            return Outcome("cancelled")
        if st["state"] == "failed":
            err = st.get("error") if isinstance(st.get("error"), dict) else {}
            if err.get("code"):
                detail = err.get("message") or st.get("message")
                return Outcome("failed", message=f"CUPID backend error ({err['code']}): {detail}")
            return Outcome("failed", message=f"CUPID reconstruction failed: {st.get('message') or 'unknown error'}")
        self._publish("done", "downloading result", 1.0)
        # an object's result stays on the service (its stage 1 is what a refine starts from) until the artist
        # refines it (see `superseded_jobs`) or it expires there; a scene has nothing to refine from: freed now
        bundle = find_bundle(client.result(self.job_id, self._incoming() / "bundle", free=r.mode != "object"))
        if self.cancel_requested:   # cancelled during the download: nothing is imported
            if r.mode == "object":
                self._forget()
            return Outcome("cancelled")
        restore = r.restore
        if restore is not None:
            restore_original_photo(bundle, restore.width, restore.height, restore.photo, restore.name)
        return Outcome("done", bundle=bundle)

    def _forget(self) -> None:
        """Let the backend delete a job the artist cancelled, once it ended (its result, its stage 1)."""
        try:
            self._client.cancel(self.job_id)
        except Exception as exc:   # the backend forgets it after its time-to-live anyway
            print(f"CUPID: could not delete cancelled job {self.job_id}: {exc}", flush=True)
