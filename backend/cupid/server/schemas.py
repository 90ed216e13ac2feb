"""The service's answers as Pydantic models, so `/openapi.json` describes every one of them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import InputError
from ..geometry.pnp import PNP_METHODS

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Mode = Literal["object", "scene"]
PnpMethod = Literal[("", *PNP_METHODS)]  # type: ignore[valid-type]  # "": the model's default
SEED_LIMIT = 2 ** 63  # seeds are 0 <= seed < 2**63 (torch's generator takes a signed 64-bit seed)


def check_seed(seed: int, name: str = "seed") -> int:
    """The service's rule for a seed (its form field: 0 <= seed < SEED_LIMIT), for the CLI's flags, which
    must refuse a seed before any work rather than fail in the sampler."""
    if not 0 <= seed < SEED_LIMIT:
        raise InputError(f"{name} must be from 0 to 2^63 - 1, got {seed}")
    return seed


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. bad_input, busy, disk_full, expired")
    message: str = Field(description="one sentence for the user")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JobStatus(BaseModel):
    id: str
    state: JobState
    stage: str = Field(description="queued, loading, condition, structure, pose, latent, decode, export, "
                                   "packing, or the final state")
    progress: float = Field(ge=0.0, le=1.0)
    message: str
    mode: Mode
    seed: int
    number: int = Field(description="submission order: the worker runs jobs in this order")
    error: ErrorDetail | None = None
    preview: bool = Field(False, description="stage 1 is done: GET /v1/jobs/{id}/preview has its camera and "
                                             "voxels (object mode)")


class PreviewCamera(BaseModel):
    K: list[list[float]]
    R: list[list[float]]
    t: list[float]


class Preview(BaseModel):
    camera: PreviewCamera = Field(description="OpenCV camera in the photo's pixels: x_cam = R x + t")
    width: int
    height: int
    res: int = Field(description="voxels per axis of the structure grid over [-0.5, 0.5]^3")
    voxels: list[list[int]] = Field(description="occupied voxels [i, j, k], object frame (Z-up): centre "
                                                "(i + 0.5) / res - 0.5")


class Limits(BaseModel):
    max_queue: int = Field(description="jobs queued or running; one more is answered 503 busy")
    max_queued_bytes: int = Field(description="decoded inputs those jobs may keep waiting on disk")
    max_result_bytes: int = Field(description="finished results kept; past it the oldest unfetched go")
    max_upload_bytes: int
    result_ttl_s: float = Field(description="seconds an unfetched result is kept")


class Replica(BaseModel):
    id: str = Field(description="the model replica's id (Ray Serve's)")
    device: str
    dtype: str
    state: Literal["idle", "busy", "lost"] = Field(description="busy: running a job; lost: stopped answering")
    job: str | None = Field(None, description="the job it runs")
    node: str | None = Field(None, description="the address of the machine it runs on")


class Health(BaseModel):
    version: str
    device: str
    dtype: str = Field(description="the networks' precision on that device (float32, bfloat16 or float16), "
                                   "chosen at start, before the model loads")
    instance: str = Field(description="random per start: a different value means the backend restarted "
                                      "and its earlier jobs are gone")
    model_loaded: bool
    model_error: str | None
    queue_length: int = Field(description="jobs queued or running")
    queued_bytes: int
    result_bytes: int
    limits: Limits
    replicas: list[Replica] | None = Field(None, description="`cupid serve --ray`: the model replicas, each with "
                                                             "its device and state; null for one local worker")


_WHY = {
    401: "no valid bearer token",
    403: "the Host or Origin header does not address this server",
    404: "no such job (or route); for a refine: the source job is gone, run the reconstruction again",
    409: "the job is not done",
    410: "the result is gone (expired, evicted by the result cap, or deleted)",
    413: "the upload is larger than the server accepts",
    422: "the form or the image is unusable (code bad_input)",
    503: "busy: the queue is full (see Retry-After)",
    507: "disk_full: the server's disk is full",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of a route for these error statuses, all `ErrorResponse` bodies."""
    return {s: {"model": ErrorResponse, "description": _WHY[s]} for s in statuses}
