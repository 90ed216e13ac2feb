"""One worker thread runs reconstruction jobs in submission order; results live in a temp dir.

The pipeline is loaded once (lazily, or at start) and kept. A job that fails never stops the
worker. Cancellation is a flag the pipeline checks between sampler steps; a queued job is
cancelled at once. Finished results are kept until fetched (then for a grace period) or until
their time-to-live runs out, whichever comes first.
"""
from __future__ import annotations

import itertools
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import Cancelled, CupidError
from ..run import reconstruct_bundle

PipelineFactory = Callable[[], Any]
TMP_PREFIX = "cupid-serve-"
OWNER_FILE = "owner.pid"


def zip_dir(directory: Path, target: Path) -> Path:
    """Write every file under `directory` into the zip `target` (paths relative, '/'-separated)."""
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in sorted(directory.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(directory).as_posix())
    partial.replace(target)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs(root: Path | None = None) -> list[Path]:
    """Remove the temp dirs of servers that died without cleaning up (SIGKILL, power loss).

    Only dirs this code made (prefix + an owner-pid file) whose process is gone are touched."""
    root = Path(tempfile.gettempdir()) if root is None else root
    removed = []
    for d in root.glob(TMP_PREFIX + "*"):
        try:
            pid = int((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@dataclass
class Job:
    """State of one job as the API reports it."""

    id: str
    image: bytes
    image_name: str
    mask: bytes | None
    mode: str
    seed: int
    steps: int
    number: int
    pnp: str | None = None         # camera solver; None: the model's default
    state: str = "queued"          # queued | running | done | failed | cancelled
    stage: str = "queued"
    progress: float = 0.0
    message: str = "waiting in the queue"
    error: dict | None = None
    result_zip: Path | None = None
    finished_at: float | None = None
    fetched_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict:
        out = {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 4),
               "message": self.message, "mode": self.mode, "seed": self.seed, "number": self.number}
        if self.error:
            out["error"] = self.error
        return out


class JobQueue:
    """Submission-ordered jobs, one worker thread, results under a private temp dir."""

    def __init__(self, factory: PipelineFactory, *, result_ttl: float = 3600.0, fetched_grace: float = 120.0,
                 preload: bool = False):
        self._factory = factory
        self._pipeline: Any = None
        self._load_error: CupidError | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        sweep_stale_dirs()
        self._tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        (self._tmp / OWNER_FILE).write_text(str(os.getpid()))
        self.result_ttl = result_ttl
        self.fetched_grace = fetched_grace
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

    def queue_length(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))

    def submit(self, image: bytes, image_name: str, mask: bytes | None, mode: str, seed: int, steps: int,
               pnp: str | None = None) -> Job:
        job = Job(id=secrets.token_hex(8), image=image, image_name=image_name, mask=mask, mode=mode, seed=seed,
                  steps=steps, number=next(self._counter), pnp=pnp)
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:  # the worker takes a queued job under the same lock: no job is both
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.message = "cancelling at the next sampler step"
        return job

    def mark_fetched(self, job: Job) -> None:
        job.fetched_at = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._queue.put(None)
        self._worker.join(timeout=30)
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ---------------------------------------------------------------- worker side
    @property
    def model_error(self) -> str | None:
        """Why the last attempt to load the model failed (None once loaded or before trying)."""
        return None if self._load_error is None else self._load_error.message

    def _pipeline_or_raise(self) -> Any:
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
        job.state, job.message, job.error = state, message, error
        job.stage = state
        job.finished_at = time.monotonic()
        job.image = b""
        job.mask = None

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
            self._execute(job)

    def _execute(self, job: Job) -> None:
        out = self._tmp / job.id
        try:
            pipe = self._pipeline_or_raise()

            def progress(stage: str, fraction: float) -> None:
                job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
                if not job.cancel.is_set():
                    job.message = stage

            bundle = reconstruct_bundle(pipe, job.image, out, mask=job.mask, mode=job.mode, seed=job.seed,
                                        steps=job.steps or None, progress=progress, should_cancel=job.cancel.is_set,
                                        pnp=job.pnp)
            job.stage, job.message = "packing", "packing the result"
            zipped = zip_dir(Path(bundle), self._tmp / f"{job.id}.zip")
            shutil.rmtree(out, ignore_errors=True)
        except Cancelled:
            shutil.rmtree(out, ignore_errors=True)
            self._finish(job, "cancelled", "cancelled")
            return
        except CupidError as exc:
            shutil.rmtree(out, ignore_errors=True)
            self._finish(job, "failed", exc.message, {"code": exc.code, "message": exc.message})
            return
        except Exception as exc:  # keep serving: report, log the traceback for the developer
            traceback.print_exc()
            shutil.rmtree(out, ignore_errors=True)
            (self._tmp / f"{job.id}.zip").unlink(missing_ok=True)
            msg = f"internal error: {type(exc).__name__}: {exc}"
            self._finish(job, "failed", msg, {"code": "internal_error", "message": msg})
            return
        job.result_zip = zipped
        job.progress = 1.0
        self._finish(job, "done", "finished")

    # ---------------------------------------------------------------- cleaning
    def clean(self, now: float | None = None) -> int:
        """Drop finished jobs whose result was fetched `fetched_grace` ago or is older than the TTL."""
        now = time.monotonic() if now is None else now
        dropped = 0
        with self._lock:
            for jid, job in list(self._jobs.items()):
                if job.finished_at is None:
                    continue
                expired = now - job.finished_at > self.result_ttl
                fetched = job.fetched_at is not None and now - job.fetched_at > self.fetched_grace
                if expired or fetched:
                    if job.result_zip is not None:
                        job.result_zip.unlink(missing_ok=True)
                    del self._jobs[jid]
                    dropped += 1
        return dropped

    def _clean_loop(self) -> None:
        while not self._stop.wait(5.0):
            self.clean()
