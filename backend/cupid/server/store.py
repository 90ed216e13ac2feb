"""What the routes need from whatever holds the jobs: one interface, two holders.

`cupid serve` holds them in this process (`cupid.server.jobs.JobQueue`: one worker thread);
`cupid serve --ray` holds them in a Ray actor that every ingress replica asks and model replicas
report to (`cupid.cluster.service.RayJobStore`). The routes, schemas, guard and error codes are the
same for both: only this interface lies between them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .inputs import JobInputs

MB = 1024 * 1024


class JobView(Protocol):
    """One job as the routes answer it."""

    def public(self) -> dict: ...


class JobStore(Protocol):
    """The jobs behind the /v1 routes. Refusals are raised as the server's CupidErrors (Busy,
    TooLarge, NotFound, NotReady, Expired, DiskFull, InputError), which the app answers by code."""

    instance: str  # random per start: clients tell a restart by it

    @property
    def model_loaded(self) -> bool: ...

    @property
    def model_error(self) -> str | None: ...

    def queue_length(self) -> int: ...

    def usage(self) -> dict[str, int]: ...            # {"queued_bytes", "result_bytes"[, "kept_bytes"]}

    def replicas(self) -> list[dict] | None: ...      # the model replicas; None: one worker in this process

    def check_room(self, nbytes: int = 0) -> None: ...

    def submit(self, inputs: JobInputs, mode: str, seed: int, steps: int, pnp: str | None = None,
               prompts: Any = None, real_size: bool | None = None, photo_texture: bool = True) -> JobView: ...

    def submit_refine(self, from_job: str, camera: dict, steps: int, photo_texture: bool = True) -> JobView: ...

    def preview(self, job_id: str) -> dict: ...

    def pipeline(self) -> Any: ...                    # something with `object_mask` and `segment` (POST /v1/segment)

    def get(self, job_id: str) -> JobView | None: ...

    def cancel(self, job_id: str) -> JobView | None: ...

    def open_result(self, job_id: str) -> tuple[BinaryIO, JobView]: ...

    def close(self) -> None: ...


__all__ = ["JobStore", "JobView"]



class HeldResults:
    """Finished results kept as zip files under a byte cap, shared by both holders of jobs (the local queue
    and the Ray board): a job holds `result_zip`, `result_bytes`, `gone`, `finished_at` and `fetched_at`."""

    _jobs: dict[str, Any]
    _result_bytes: int
    max_result_bytes: int
    result_ttl: float
    fetched_grace: float

    def _free_zip(self, job: Any, why: str) -> None:
        if job.result_zip is not None:
            try:
                Path(job.result_zip).unlink(missing_ok=True)
            except OSError:
                pass  # Windows: still being sent; the directory goes when the server stops
            self._result_bytes -= job.result_bytes
            job.result_zip, job.result_bytes = None, 0
        job.gone = job.gone or why

    def _drop_result(self, job: Any, why: str) -> None:
        self._free_zip(job, why)

    def _evict(self, keep: Any) -> None:
        """Past the cap, drop results until under it: the oldest unfetched first (a fetched one has already
        reached its client), then the oldest fetched; never `keep`, the one just finished."""
        why = f"results are capped at {self.max_result_bytes / MB:.0f} MB and newer ones took its place"
        while self._result_bytes > self.max_result_bytes:
            held = [j for j in self._jobs.values() if j.result_zip is not None and j is not keep]
            if not held:
                return
            self._drop_result(min(held, key=lambda j: (j.fetched_at is not None, j.finished_at or 0.0)), why)

    def _kept_for_refines(self, job: Any) -> bool:
        """Whether a fetched job stays (without its zip) until the TTL because a refine may start from it."""
        return False

    def clean(self, now: float | None = None) -> int:
        """Forget finished jobs whose result was fetched `fetched_grace` ago or is older than the TTL; a
        fetched job kept for refines loses its zip only, and stays until the TTL. Returns how many went."""
        now = time.monotonic() if now is None else now
        dropped = 0
        for jid, job in list(self._jobs.items()):
            if job.finished_at is None:
                continue
            expired = now - job.finished_at > self.result_ttl
            fetched = job.fetched_at is not None and now - job.fetched_at > self.fetched_grace
            if fetched and not expired and self._kept_for_refines(job):
                self._free_zip(job, "it was fetched")
            elif expired or fetched:
                self._drop_result(job, "it expired")
                del self._jobs[jid]
                dropped += 1
        return dropped
