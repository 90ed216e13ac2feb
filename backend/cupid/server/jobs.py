"""One worker thread runs reconstruction jobs in submission order, within fixed limits.

The pipeline is loaded once (lazily, or at start) and kept. A job that fails never stops the
worker. The queue is bounded in jobs (`max_queue`, queued or running) and in the bytes their
decoded inputs take, which wait on disk, not in memory; past either bound a submit is refused
with `Busy` (503) and a Retry-After from the recent run times. Finished results are zips kept
until fetched (then for a grace period), until their time-to-live runs out, until a DELETE, or
until the results' total passes `max_result_bytes` (the oldest unfetched go first); a result that
is gone is answered 410 `expired`, never with a server path.

Cancellation: a queued job at once; a job whose model is still loading at once (it never starts);
a running job within about a second wherever it is: at its next stage, sampler step, decoder, file
written by the export or file packed into the zip; a cancel that arrives while the zip is finished
still ends the job `cancelled`, its files removed.
"""
from __future__ import annotations

import itertools
import math
import queue
import secrets
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..errors import Cancelled, CupidError
from ..run import reconstruct_bundle, refine_bundle
from . import inputs as job_inputs
from .errors import Busy, DiskFull, Expired, NotFound, NotReady, TooLarge, is_disk_full
from .inputs import JobInputs
from .storage import WorkDir, zip_dir
from .store import HeldResults

PipelineFactory = Callable[[], Any]
FINISHED = ("done", "failed", "cancelled")
MB = 1024 * 1024


@dataclass
class Job:
    """State of one job as the API reports it, and where its files are."""

    id: str
    mode: str
    seed: int
    steps: int
    number: int
    pnp: str | None = None         # camera solver; None: the model's default
    prompts: Any = None            # scene mode: (points, boxes) picking the objects
    real_size: bool | None = None  # object mode: measure in meters (None: when a metric point map is there)
    photo_texture: bool = True     # project the photo's pixels onto the textures (export)
    refine_from: Any = None        # a refine: the source job's kept stage 1 (cupid.pipeline.StageOne)
    camera: Any = None             # a refine: the camera to use (cupid.geometry.CameraPose)
    stage_one: Any = None          # object mode: stage 1's result, kept while the result is (for refines)
    kept_bytes: int = 0            # what that stage 1 holds in memory (counted against max_kept_bytes)
    kept_used: float = 0.0         # when it was kept or last refined from (the least recently used goes first)
    kept_gone: str | None = None   # why its stage 1 is no longer kept
    preview: dict | None = None    # stage 1's camera and voxels, once known
    inputs_dir: Path | None = None
    input_bytes: int = 0
    state: str = "queued"          # queued | running | done | failed | cancelled
    stage: str = "queued"
    progress: float = 0.0
    message: str = "waiting in the queue"
    error: dict | None = None
    result_zip: Path | None = None
    result_bytes: int = 0
    gone: str | None = None        # why a finished result is no longer kept
    started_at: float | None = None
    finished_at: float | None = None
    fetched_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict:
        return {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 4),
                "message": self.message, "mode": self.mode, "seed": self.seed, "number": self.number,
                "error": self.error, "preview": self.preview is not None}


class JobQueue(HeldResults):
    """Submission-ordered jobs, one worker thread, inputs and results under a private directory."""

    def __init__(self, factory: PipelineFactory, *, max_queue: int = 16, max_queued_bytes: int = 1024 * MB,
                 max_result_bytes: int = 2048 * MB, result_ttl: float = 3600.0, fetched_grace: float = 120.0,
                 preload: bool = False, root: Path | None = None, max_kept_bytes: int = 512 * MB):
        self._factory = factory
        self._pipeline: Any = None
        self._load_error: CupidError | None = None
        self._load_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self.instance = secrets.token_hex(8)  # a new one on every start: clients tell a restart by it
        self.max_queue = max_queue
        self.max_queued_bytes = max_queued_bytes
        self.max_result_bytes = max_result_bytes
        self.max_kept_bytes = max_kept_bytes
        self.result_ttl = result_ttl
        self.fetched_grace = fetched_grace
        self._queued_bytes = 0
        self._result_bytes = 0
        self._kept_bytes = 0
        self._run_time = 5.0  # seconds a job takes, smoothed (for Retry-After)
        self._dir = WorkDir(root)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="cupid-worker", daemon=True)
        self._worker.start()
        self._janitor = threading.Thread(target=self._clean_loop, name="cupid-janitor", daemon=True)
        self._janitor.start()
        if preload:
            self._queue.put(None)  # the worker loads the pipeline before anything else

    # ---------------------------------------------------------------- API side
    @property
    def model_loaded(self) -> bool:
        return self._pipeline is not None

    @property
    def model_error(self) -> str | None:
        """Why the last attempt to load the model failed (None once loaded or before trying)."""
        return None if self._load_error is None else self._load_error.message

    @property
    def directory(self) -> Path:
        return self._dir.path

    def queue_length(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {"queued_bytes": self._queued_bytes, "result_bytes": self._result_bytes,
                    "kept_bytes": self._kept_bytes}

    def replicas(self) -> None:
        """One worker thread in this process: no replicas to list (`cupid serve --ray` lists its own)."""
        return None

    def retry_after(self) -> int:
        """Seconds until a place is likely to free up: about one job's run time."""
        return int(min(max(math.ceil(self._run_time), 1), 600))

    def check_room(self, nbytes: int = 0) -> None:
        """Raise Busy when one more job of `nbytes` input would pass a limit (TooLarge if it never fits)."""
        if nbytes > self.max_queued_bytes:
            raise TooLarge(f"the decoded photo and mask take {nbytes / MB:.0f} MB, more than the "
                           f"{self.max_queued_bytes / MB:.0f} MB this backend lets jobs wait with")
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))
            if waiting >= self.max_queue:
                raise Busy(f"the CUPID backend is busy: it holds {waiting} jobs, queued or running, its limit "
                           f"(cupid serve --max-queue); try again in {self.retry_after()} s", self.retry_after())
            if self._queued_bytes + nbytes > self.max_queued_bytes:
                raise Busy(f"the CUPID backend is busy: {self._queued_bytes / MB:.0f} MB of photos are waiting "
                           f"(its limit is {self.max_queued_bytes / MB:.0f} MB); try again in "
                           f"{self.retry_after()} s", self.retry_after())

    def submit(self, inputs: JobInputs, mode: str, seed: int, steps: int, pnp: str | None = None,
               prompts: Any = None, real_size: bool | None = None, photo_texture: bool = True) -> Job:
        """Admit a job (or raise Busy / TooLarge), spool its inputs to disk (or raise DiskFull), queue it."""
        nbytes = inputs.nbytes
        with self._lock:
            self.check_room(nbytes)
            job = Job(id=secrets.token_hex(8), mode=mode, seed=seed, steps=steps, number=next(self._counter),
                      pnp=pnp, prompts=prompts, real_size=real_size, input_bytes=nbytes,
                      photo_texture=photo_texture)
            job.inputs_dir = self._dir.path / "inputs" / job.id
            self._jobs[job.id] = job
            self._queued_bytes += nbytes
        try:
            job_inputs.spool(inputs, job.inputs_dir)
        except BaseException:
            with self._lock:
                del self._jobs[job.id]
                self._queued_bytes -= nbytes
            raise
        self._queue.put(job)
        return job

    def submit_refine(self, from_job: str, camera: dict, steps: int, photo_texture: bool = True) -> Job:
        """Queue a refine: stage 2, decoding and export of job `from_job`'s kept stage 1 with `camera`
        (K, R, t in the photo's pixels), checked here against that stage 1 (InputError: 422)."""
        from ..geometry import CameraPose

        with self._lock:
            self.check_room()
            source = self._jobs.get(from_job)
            first = None if source is None else source.stage_one
            if first is None:
                if source is not None and source.kept_gone:
                    raise NotFound(f"job {from_job}'s stage 1 is no longer kept ({source.kept_gone}): run the "
                                   f"reconstruction again")
                raise NotFound(f"job {from_job} is unknown, expired or has no stage 1 to refine from (a scene, or "
                               f"not finished): run the reconstruction again")
            source.kept_used = time.monotonic()
            width, height = first.processed.size
            cam = CameraPose.from_dict({**camera, "width": width, "height": height})
            self._pipeline.check_camera(cam, first.structure, first.processed)
            job = Job(id=secrets.token_hex(8), mode="object", seed=source.seed, steps=steps,
                      number=next(self._counter), refine_from=first, camera=cam, photo_texture=photo_texture)
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def preview(self, job_id: str) -> dict:
        """Stage 1's camera and voxels of a job (NotFound before stage 1 ends, or for a scene)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id} (finished results are kept for a limited time)")
            if job.preview is None:
                raise NotFound(f"job {job_id} has no preview yet: stage 1 has not finished (scenes have none)")
            return job.preview

    def pipeline(self) -> Any:
        """The loaded pipeline (loading it first if needed), for requests answered at once (segmentation)."""
        return self._pipeline_or_raise()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting or running job; for a finished one, free its result and forget it."""
        with self._lock:  # the worker takes a queued job under the same lock: no job is both
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in FINISHED:
                self._drop_result(job, "it was deleted")
                del self._jobs[job_id]
                return job
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.stage == "loading":
                self._finish(job, "cancelled", "cancelled while the model was loading")
            else:
                job.message = "cancelling at the next stage or sampler step"
        return job

    def open_result(self, job_id: str) -> tuple[BinaryIO, Job]:
        """The finished zip, opened (an open file outlives its removal); NotFound, NotReady or Expired."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id} (finished results are kept for a limited time)")
            if job.state != "done":
                raise NotReady(f"job {job_id} is {job.state}, not done")
            if job.result_zip is not None:
                try:
                    fh = job.result_zip.open("rb")
                except FileNotFoundError:
                    self._drop_result(job, "its file was removed")
                else:
                    job.fetched_at = time.monotonic()
                    return fh, job
            raise Expired(f"the result of job {job_id} has expired ({job.gone}); run it again")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
        self._queue.put(None)
        self._worker.join(timeout=30)
        self._dir.remove()

    # ---------------------------------------------------------------- worker side
    def _pipeline_or_raise(self) -> Any:
        with self._load_lock:  # the worker and a segmentation request may both ask first
            if self._pipeline is None:
                try:
                    self._pipeline = self._factory()
                except CupidError as exc:
                    self._load_error = exc
                    raise
                except Exception as exc:  # a broken install must not kill the worker
                    self._load_error = CupidError(f"the model could not be loaded: {type(exc).__name__}: {exc}",
                                                  code="model_load_failed")
                    raise self._load_error from exc
                self._load_error = None
            return self._pipeline

    def _finish(self, job: Job, state: str, message: str, error: dict | None = None) -> None:
        """End a job once (a later call is ignored) and free its spooled inputs."""
        with self._lock:
            if job.state in FINISHED:
                return
            job.state, job.stage, job.message, job.error = state, state, message, error
            job.finished_at = time.monotonic()
            if job.started_at is not None and state == "done":
                self._run_time = 0.7 * self._run_time + 0.3 * (job.finished_at - job.started_at)
            if job.inputs_dir is not None:
                job_inputs.remove(job.inputs_dir)
                job.inputs_dir = None
                self._queued_bytes -= job.input_bytes

    def _fail(self, job: Job, exc: CupidError) -> None:
        self._finish(job, "failed", exc.message, {"code": exc.code, "message": exc.message})

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                if not self._stop.is_set():
                    try:
                        self._pipeline_or_raise()
                    except CupidError as exc:
                        print(f"cupid serve: {exc.message}", file=sys.stderr)
                continue
            with self._lock:
                if job.state != "queued":
                    continue
                job.state, job.stage, job.message = "running", "loading", "loading the model"
                job.started_at = time.monotonic()
            self._execute(job)

    def _execute(self, job: Job) -> None:
        out = self._dir.path / "results" / job.id
        target = self._dir.path / "results" / f"{job.id}.zip"
        try:
            pipe = self._pipeline_or_raise()
            with self._lock:
                if job.state != "running":
                    return  # cancelled while the model loaded: it never starts
                job.stage, job.message = "starting", "reading the photo"

            def progress(stage: str, fraction: float) -> None:
                job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
                if not job.cancel.is_set():
                    job.message = stage

            def keep_stage_one(first: Any) -> None:
                job.preview = first.preview().to_dict()
                self._keep(job, first)

            export = {"photo_texture": job.photo_texture}
            if job.refine_from is not None:
                keep_stage_one(replace(job.refine_from, camera=job.camera))  # a refine can be refined again
                bundle = refine_bundle(pipe, job.refine_from, job.camera, out, steps=job.steps or None,
                                       progress=progress, should_cancel=job.cancel.is_set, export=export)
            else:
                data = job_inputs.load(job.inputs_dir)
                bundle = reconstruct_bundle(pipe, data.photo, out, mask=data.pipeline_mask(job.mode), mode=job.mode,
                                            seed=job.seed, steps=job.steps or None, progress=progress,
                                            should_cancel=job.cancel.is_set, pnp=job.pnp, prompts=job.prompts,
                                            export=export,
                                            **({"on_stage_one": keep_stage_one} if job.mode == "object" else {}),
                                            **({"real_size": job.real_size} if job.real_size is not None else {}))
                del data
            job.refine_from = None
            if job.cancel.is_set():
                raise Cancelled("the job was cancelled")
            job.stage, job.message = "packing", "packing the result"
            zipped = zip_dir(Path(bundle), target, should_cancel=job.cancel.is_set)
        except Exception as exc:  # keep serving whatever happened; no file of the job is left behind
            shutil.rmtree(out, ignore_errors=True)
            target.unlink(missing_ok=True)
            self._end_with(job, exc)
            return
        shutil.rmtree(out, ignore_errors=True)
        with self._lock:   # a cancel takes the same lock: it lands before this (cancelled) or after (freed)
            if job.cancel.is_set():
                zipped.unlink(missing_ok=True)
                self._end_with(job, Cancelled("the job was cancelled"))
                return
            job.result_zip, job.result_bytes = zipped, zipped.stat().st_size
            self._result_bytes += job.result_bytes
            job.progress = 1.0
            self._finish(job, "done", "finished")
            self._evict(keep=job)

    def _end_with(self, job: Job, exc: Exception) -> None:
        """Cancelled, or failed with the error's code; an unexpected error's text goes only to the log.
        A cancelled job keeps its stage 1 (the artist may stop at the preview and refine from it)."""
        job.refine_from = None
        if not isinstance(exc, Cancelled):
            self._forget(job, "the job failed")
        if isinstance(exc, Cancelled):
            self._finish(job, "cancelled", "cancelled")
        elif isinstance(exc, CupidError):
            self._fail(job, exc)
        elif is_disk_full(exc):
            self._fail(job, DiskFull(self._dir.path))
        else:
            traceback.print_exception(exc)
            self._fail(job, CupidError(f"internal error in the backend ({type(exc).__name__}); its log has the "
                                       f"details", code="internal_error"))

    # ---------------------------------------------------------------- kept stage 1s and results
    def _keep(self, job: Job, first: Any) -> None:
        """Keep a job's stage 1 for refines within `max_kept_bytes`: the least recently used others go
        first; one larger than the whole cap is not kept at all."""
        size = held_bytes(first)
        with self._lock:
            self._forget(job, "replaced")
            job.stage_one, job.kept_bytes, job.kept_used, job.kept_gone = first, size, time.monotonic(), None
            self._kept_bytes += size
            cap = f"stage 1s kept for refines are capped at {self.max_kept_bytes / MB:.0f} MB (cupid serve " \
                  f"--max-kept-mb)"
            while self._kept_bytes > self.max_kept_bytes:
                held = [j for j in self._jobs.values() if j.stage_one is not None and j is not job]
                if not held:
                    self._forget(job, f"{cap}, and it alone takes {size / MB:.0f} MB")
                    return
                self._forget(min(held, key=lambda j: j.kept_used), f"{cap} and newer ones took its place")

    def _forget(self, job: Job, why: str) -> None:
        with self._lock:
            if job.stage_one is not None:
                job.kept_gone = why
            self._kept_bytes -= job.kept_bytes
            job.stage_one, job.kept_bytes = None, 0

    def _drop_result(self, job: Job, why: str) -> None:
        with self._lock:
            self._free_zip(job, why)
            self._forget(job, why)   # refines are possible while the result is kept

    def _free_zip(self, job: Job, why: str) -> None:
        with self._lock:
            super()._free_zip(job, why)

    def _evict(self, keep: Job) -> None:
        with self._lock:
            super()._evict(keep)

    def _kept_for_refines(self, job: Job) -> bool:
        return job.stage_one is not None   # the artist may still refine from it

    def clean(self, now: float | None = None) -> int:
        with self._lock:
            return super().clean(now)

    def _clean_loop(self) -> None:
        while not self._stop.wait(5.0):
            self.clean()
            self._dir.heartbeat()


def held_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of the arrays and tensors `value` holds (through dataclasses, dicts, lists and tuples), each
    counted once: what keeping it costs in memory."""
    import dataclasses

    import numpy as np
    import torch

    seen = set() if seen is None else seen
    if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.untyped_storage().nbytes())
    if dataclasses.is_dataclass(value):
        items = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = list(getattr(value, "__dict__", {}).values())
    return sum(held_bytes(v, seen) for v in items)


__all__ = ["Job", "JobQueue", "PipelineFactory", "FINISHED", "held_bytes"]
