"""The job board of `cupid serve --ray`: one Ray actor holding every job's state, which every
ingress replica asks and every model replica reports to, so status, preview, cancel and result
work whichever replica runs a job.

It admits jobs within the same limits as the local queue (`max_queue` jobs queued or running,
`max_queued_bytes` of spooled inputs; past either a `busy` refusal with a Retry-After), hands each
admitted job to the model deployment through Ray Serve (whose router queues it until a replica is
free, and whose autoscaler counts those queued jobs), and watches the call: a replica that dies
mid-job ends the job `failed` with code `worker_lost`, or runs it once more when `retry` is set.
Finished zips are kept like the local service keeps them: until fetched (then `fetched_grace`),
until `result_ttl`, or until the results pass `max_result_bytes` (oldest unfetched first).

Answers are plain data: a refusal is `("code", "message", retry_after)`, which the ingress raises
as the server's own error (`cupid.cluster.service`).
"""
from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..server.store import HeldResults

FINISHED = ("done", "failed", "cancelled")
MB = 1024 * 1024
Refusal = tuple[str, str, int]


@dataclass
class BoardJob:
    id: str
    spec: dict                      # what the replica runs: mode, seed, steps, pnp, prompts, inputs_dir
    number: int
    input_bytes: int = 0
    state: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    message: str = "waiting in the queue"
    error: dict | None = None
    preview: dict | None = None
    replica: str | None = None
    attempts: int = 0
    cancel: bool = False
    result_zip: str | None = None
    result_bytes: int = 0
    gone: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    fetched_at: float | None = None
    watcher: Any = field(default=None, repr=False)

    def public(self) -> dict:
        return {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 4),
                "message": self.message, "mode": self.spec["mode"], "seed": self.spec["seed"], "number": self.number,
                "error": self.error, "preview": self.preview is not None}


class JobBoard(HeldResults):
    """Run as a Ray actor (async: its methods never wait on each other); see the module docstring."""

    def __init__(self, *, instance: str, results_dir: str, app_name: str, model_deployment: str,
                 max_queue: int = 16, max_queued_bytes: int = 1024 * MB, max_result_bytes: int = 2048 * MB,
                 result_ttl: float = 3600.0, fetched_grace: float = 120.0, retry: bool = False):
        self.instance = instance
        self.results_dir = Path(results_dir)
        self.app_name, self.model_deployment = app_name, model_deployment
        self.max_queue, self.max_queued_bytes = max_queue, max_queued_bytes
        self.max_result_bytes, self.result_ttl, self.fetched_grace = max_result_bytes, result_ttl, fetched_grace
        self.retry = retry
        self._jobs: dict[str, BoardJob] = {}
        self._counter = itertools.count()
        self._replicas: dict[str, dict] = {}
        self._handles: dict[str, Any] = {}
        self._queued_bytes = 0
        self._result_bytes = 0
        self._run_time = 5.0
        self._model: Any = None
        self._janitor: Any = None

    # ---------------------------------------------------------------- ingress side
    def _busy(self, nbytes: int) -> Refusal | None:
        if nbytes > self.max_queued_bytes:
            return ("upload_too_large", f"the decoded photo and mask take {nbytes / MB:.0f} MB, more than the "
                                        f"{self.max_queued_bytes / MB:.0f} MB this backend lets jobs wait with", 0)
        waiting = sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))
        wait = self._retry_after()
        if waiting >= self.max_queue:
            return ("busy", f"the CUPID backend is busy: it holds {waiting} jobs, queued or running, its limit "
                            f"(cupid serve --max-queue); try again in {wait} s", wait)
        if self._queued_bytes + nbytes > self.max_queued_bytes:
            return ("busy", f"the CUPID backend is busy: {self._queued_bytes / MB:.0f} MB of photos are waiting "
                            f"(its limit is {self.max_queued_bytes / MB:.0f} MB); try again in {wait} s", wait)
        return None

    def _retry_after(self) -> int:
        """About one job's run time, shared out over the live replicas."""
        live = max(sum(1 for r in self._replicas.values() if r["state"] != "lost"), 1)
        return int(min(max(math.ceil(self._run_time / live), 1), 600))

    async def check_room(self, nbytes: int = 0) -> Refusal | None:
        self._start_janitor()
        return self._busy(nbytes)

    async def submit(self, job_id: str, spec: dict, nbytes: int) -> tuple[Refusal | None, dict | None]:
        """Admit a job whose inputs are already spooled (under `spec["inputs_dir"]`) and send it to the replicas."""
        self._start_janitor()
        refusal = self._busy(nbytes)
        if refusal is not None:
            return refusal, None
        job = BoardJob(id=job_id, spec=spec, number=next(self._counter), input_bytes=nbytes)
        self._jobs[job_id] = job
        self._queued_bytes += nbytes
        job.watcher = asyncio.get_running_loop().create_task(self._dispatch(job))
        return None, job.public()

    async def status(self, job_id: str) -> dict | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.public()

    async def preview(self, job_id: str) -> tuple[Refusal | None, dict | None]:
        job = self._jobs.get(job_id)
        if job is None:
            return ("not_found", f"no job {job_id} (finished results are kept for a limited time)", 0), None
        if job.preview is None:
            return ("not_found", f"job {job_id} has no preview yet: stage 1 has not finished (scenes have none)",
                    0), None
        return None, job.preview

    async def cancel(self, job_id: str) -> dict | None:
        """A queued job ends at once (a replica that picks it up later drops it); a running one at its
        replica's next stage or sampler step; a finished one has its result freed and is forgotten."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.state in FINISHED:
            self._drop_result(job, "it was deleted")
            del self._jobs[job_id]
            return job.public()
        job.cancel = True
        if job.state == "queued":
            self._finish(job, "cancelled", "cancelled before it started")
        else:
            job.message = "cancelling at the next stage or sampler step"
        return job.public()

    async def result(self, job_id: str) -> tuple[Refusal | None, str | None]:
        """The zip's path (the caller opens it; `result_missing` if it cannot), marked fetched."""
        job = self._jobs.get(job_id)
        if job is None:
            return ("not_found", f"no job {job_id} (finished results are kept for a limited time)", 0), None
        if job.state != "done":
            return ("not_ready", f"job {job_id} is {job.state}, not done", 0), None
        if job.result_zip is None:
            return ("expired", f"the result of job {job_id} has expired ({job.gone}); run it again", 0), None
        job.fetched_at = time.monotonic()
        return None, job.result_zip

    async def result_missing(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._drop_result(job, "its file was removed")

    async def health(self) -> dict:
        await self._check_replicas()
        replicas = [{k: r[k] for k in ("id", "device", "dtype", "state", "job", "node")}
                    for r in sorted(self._replicas.values(), key=lambda r: r["id"])]
        errors = [r["error"] for r in self._replicas.values() if r.get("error")]
        return {"instance": self.instance, "queue_length": sum(1 for j in self._jobs.values()
                                                               if j.state in ("queued", "running")),
                "queued_bytes": self._queued_bytes, "result_bytes": self._result_bytes, "replicas": replicas,
                "model_loaded": any(r["state"] != "lost" for r in self._replicas.values()),
                "model_error": errors[-1] if errors else None}

    # ---------------------------------------------------------------- replica side
    async def register(self, replica_id: str, info: dict, handle: Any) -> None:
        self._replicas[replica_id] = {"id": replica_id, "device": info["device"], "dtype": info["dtype"],
                                      "node": info.get("node"), "state": "idle", "job": None}
        self._handles[replica_id] = handle

    async def deregister(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)
        self._handles.pop(replica_id, None)

    async def claim(self, job_id: str, replica_id: str) -> dict | None:
        """A replica starts a job: its spec, or None when it was cancelled (or already ended) meanwhile."""
        job = self._jobs.get(job_id)
        if job is None or job.state != "queued":
            return None
        job.state, job.stage, job.message = "running", "starting", "reading the photo"
        job.replica, job.started_at = replica_id, time.monotonic()
        job.attempts += 1
        if replica_id in self._replicas:
            self._replicas[replica_id].update(state="busy", job=job_id)
        return job.spec

    async def progress(self, job_id: str, stage: str, fraction: float) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state == "running":
            job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
            if not job.cancel:
                job.message = stage

    async def is_cancelled(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is None or job.cancel

    async def set_preview(self, job_id: str, preview: dict) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.preview = preview

    async def finish(self, job_id: str, replica_id: str, state: str, message: str, error: dict | None = None,
                     result_zip: str | None = None, result_bytes: int = 0) -> None:
        """A replica ends a job (done with its zip, failed with its error, or cancelled)."""
        job = self._jobs.get(job_id)
        if replica_id in self._replicas:
            self._replicas[replica_id].update(state="idle", job=None)
        if job is None or job.state in FINISHED:
            if result_zip:  # deleted meanwhile: nothing will fetch it
                Path(result_zip).unlink(missing_ok=True)
            return
        if state == "done":
            job.result_zip, job.result_bytes = result_zip, result_bytes
            self._result_bytes += result_bytes
            job.progress = 1.0
        self._finish(job, state, message, error)
        if state == "done":
            self._evict(keep=job)

    # ---------------------------------------------------------------- dispatch
    def _model_handle(self) -> Any:
        if self._model is None:
            from ray import serve

            self._model = serve.get_deployment_handle(self.model_deployment, app_name=self.app_name)
        return self._model

    async def _dispatch(self, job: BoardJob) -> None:
        """Send the job to a replica and watch it to the end: a lost replica fails it (or retries once)."""
        from ray.exceptions import RayActorError

        while True:
            try:
                await self._model_handle().run.remote(job.id)
            except RayActorError:
                lost = job.replica
                if lost in self._replicas:
                    self._replicas[lost].update(state="lost", job=None)
                if job.state in FINISHED:
                    return
                if job.cancel:
                    self._finish(job, "cancelled", "cancelled (its replica was lost meanwhile)")
                elif job.state == "queued" or (self.retry and job.attempts < 2 and not job.cancel):
                    # never started (its replica died first), or a second try was asked for
                    shutil.rmtree(self.results_dir / "work" / job.id, ignore_errors=True)
                    job.state, job.stage, job.progress, job.preview = "queued", "queued", 0.0, None
                    job.message = "its replica was lost: running it again" if job.attempts else job.message
                    continue
                else:
                    self._finish(job, "failed", "the replica running this job stopped (crashed, was killed or lost "
                                 "its machine)", {"code": "worker_lost",
                                                  "message": "the replica running this job was lost; run it again"})
            except Exception as exc:  # the call itself broke: the job must still end
                if job.state not in FINISHED:
                    self._finish(job, "failed", f"internal error in the backend ({type(exc).__name__})",
                                 {"code": "internal_error", "message": f"internal error in the backend "
                                                                       f"({type(exc).__name__}); its log has the "
                                                                       f"details"})
                print(f"cupid serve --ray: job {job.id}: {type(exc).__name__}: {exc}", flush=True)
            else:
                if job.state not in FINISHED:  # the replica returned without ending it
                    self._finish(job, "failed", "the replica returned without a result",
                                 {"code": "internal_error", "message": "the replica returned without a result"})
            shutil.rmtree(self.results_dir / "work" / job.id, ignore_errors=True)
            return

    def _finish(self, job: BoardJob, state: str, message: str, error: dict | None = None) -> None:
        if job.state in FINISHED:
            return
        job.state, job.stage, job.message, job.error = state, state, message, error
        job.finished_at = time.monotonic()
        if job.started_at is not None and state == "done":
            self._run_time = 0.7 * self._run_time + 0.3 * (job.finished_at - job.started_at)
        if job.spec.get("inputs_dir"):
            shutil.rmtree(job.spec["inputs_dir"], ignore_errors=True)
            self._queued_bytes -= job.input_bytes
            job.spec = {**job.spec, "inputs_dir": None}

    async def _check_replicas(self) -> None:
        """Forget replicas that no longer answer (a replica lost while idle, or scaled away)."""
        async def alive(handle: Any) -> bool:
            try:
                await asyncio.wait_for(handle.__ray_ready__.remote(), 2.0)
                return True
            except Exception:
                return False

        ids = list(self._handles)
        answers = await asyncio.gather(*(alive(self._handles[i]) for i in ids))
        for rid, ok in zip(ids, answers):
            if not ok:
                await self.deregister(rid)

    # ---------------------------------------------------------------- results and cleaning
    def _start_janitor(self) -> None:
        if self._janitor is None:
            async def loop() -> None:
                while True:
                    await asyncio.sleep(5.0)
                    self.clean()

            self._janitor = asyncio.get_running_loop().create_task(loop())


__all__ = ["JobBoard", "BoardJob", "FINISHED"]
