"""The HTTP API (FastAPI): jobs, results, health; a door only the user's token opens.

Every request must carry `Authorization: Bearer <token>` (random per start, written to a 0600
file); the `Guard` middleware also refuses requests whose Host is not the bound address (DNS
rebinding) or that come from a browser page of another origin, and caps uploads as they stream in.
Forms are validated by FastAPI from the route's signature; the photo and mask are decoded once,
checked, and spooled to disk while the job waits. Every answer has a response model (see
`/openapi.json`); every error is `{"error": {"code", "message"}}`.
"""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, BinaryIO, Iterator

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import CupidError, InputError
from ..preprocess import load_photo
from ..scene.masks import ObjectMasks, check_prompts, label_png, parse_prompts
from .errors import DiskFull, NotFound, is_disk_full
from .fields import camera_field, job_id_field, naming, prompts_field, shorten
from .guard import Guard
from .inputs import decode_inputs
from .jobs import Job, JobQueue, PipelineFactory
from .schemas import SEED_LIMIT, Health, JobStatus, Limits, Mode, PnpMethod, Preview, error_responses
from .settings import ServerSettings
from .store import JobStore

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of field errors as one sentence, e.g. "form field 'image' is required"."""
    parts = []
    for e in exc.errors():
        field = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        if e.get("type") == "missing":
            parts.append(f"form field '{field}' is required")
        else:
            parts.append(f"form field '{field}': {e.get('msg', 'invalid value')}")
    return "; ".join(parts) or "the request is malformed"


def _prompts(text: str, max_prompts: int | None = None) -> Any:
    """The `prompts` form field as (points, boxes), None when empty; InputError naming it otherwise (past
    `max_prompts` points + boxes too, counted before any is read)."""
    if not text.strip():
        return None
    with naming("prompts"):
        return parse_prompts(prompts_field(text), max_prompts)


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(1 << 20):
            yield chunk


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(CupidError)
    async def _cupid_error(_: Any, exc: CupidError) -> JSONResponse:
        return _err(exc.http_status, exc.code, shorten(exc.message), getattr(exc, "headers", None))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        if is_disk_full(exc.__cause__):  # the upload could not be spooled while the form was parsed
            full = DiskFull(tempfile.gettempdir())
            return _err(full.http_status, full.code, full.message)
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _err(exc.status_code, code, shorten(detail))

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Any, exc: RequestValidationError) -> JSONResponse:
        return _err(422, "bad_input", shorten(_validation_message(exc)))

    @api.exception_handler(Exception)
    async def _unexpected(_: Any, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            full = DiskFull(tempfile.gettempdir())
            return _err(full.http_status, full.code, full.message)
        traceback.print_exception(exc)  # the details go to the log, never into the answer
        return _err(500, "internal_error", f"internal error in the backend ({type(exc).__name__}); its log "
                                           f"has the details")


def create_app(settings: ServerSettings, factory: PipelineFactory | None = None, *,
               jobs: JobStore | None = None) -> FastAPI:
    """The ASGI app, guarded; `app.state.jobs` is its job store (a JobQueue over `factory` in this
    process unless `jobs` is given, e.g. the Ray cluster's), `app.state.intake` the thread that
    decodes uploads (shut both down when the server stops)."""
    if jobs is None:
        jobs = JobQueue(factory, max_queue=settings.max_queue, max_queued_bytes=settings.max_queued_bytes,
                        max_result_bytes=settings.max_result_bytes, result_ttl=settings.result_ttl,
                        preload=settings.preload, max_kept_bytes=settings.max_kept_bytes)
    # no /docs or /redoc: they load scripts from a CDN and cannot send the bearer token;
    # the schema itself is at /openapi.json (behind the token like every route)
    api = FastAPI(title="CUPID backend", version=__version__, docs_url=None, redoc_url=None,
                  description="Single-photo 3D reconstruction jobs for the CUPID Blender extension.",
                  responses=error_responses(401, 403))
    api.state.jobs = jobs
    # uploads are decoded and spooled by one thread: one decoded photo in memory at a time, whatever
    # the number of clients, and its memory reused by the next
    intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cupid-intake")
    api.state.intake = intake
    api.add_middleware(Guard, settings=settings)
    _install_error_handlers(api)

    @api.get("/v1/health", response_model=Health)
    def health() -> Health:
        """Version, device and precision, this run's instance id, whether the model is loaded (or why
        loading it failed), how many jobs wait or run and the bytes they hold, and the limits."""
        return Health(version=__version__, device=settings.device, dtype=settings.dtype, instance=jobs.instance,
                      model_loaded=jobs.model_loaded, model_error=jobs.model_error,
                      queue_length=jobs.queue_length(), **jobs.usage(), replicas=jobs.replicas(),
                      limits=Limits(max_queue=settings.max_queue, max_queued_bytes=settings.max_queued_bytes,
                                    max_result_bytes=settings.max_result_bytes,
                                    max_upload_bytes=settings.max_upload_bytes, result_ttl_s=settings.result_ttl))

    @api.post("/v1/jobs", status_code=202, response_model=JobStatus,
              responses=error_responses(404, 413, 422, 503, 507))
    async def submit(image: Annotated[UploadFile | None, File(description="the photo (PNG, JPEG, ...); "
                                                                          "not with from_job")] = None,
                     mask: Annotated[UploadFile | None, File(description="object mode: the object's mask; "
                                                                         "scene mode: a label image")] = None,
                     mode: Annotated[Mode, Form()] = "object",
                     seed: Annotated[int, Form(ge=0, lt=SEED_LIMIT)] = 0,
                     steps: Annotated[int, Form(ge=0, le=500, description="0: the model's default")] = 0,
                     pnp: Annotated[PnpMethod, Form(description="camera solver; empty: the model's default")] = "",
                     prompts: Annotated[str, Form(description='scene mode without a mask: JSON {"points": [[x, y]'
                                                              ', ...], "boxes": [[x0, y0, x1, y1], ...]}, one '
                                                              'object per pick (photo pixels)')] = "",
                     from_job: Annotated[str, Form(description="refine: the job whose stage 1 (photo, structure) "
                                                               "to reuse")] = "",
                     camera: Annotated[str, Form(description='refine: JSON {"K", "R", "t"}, OpenCV, in the '
                                                             "photo's pixels and the object's own frame "
                                                             "(scene.json's camera composed with the object's "
                                                             "transform)")] = "",
                     real_size: Annotated[bool | None, Form(description="object mode: measure the object in "
                                                                        "meters with a metric point map; empty: "
                                                                        "when the backend has one")] = None,
                     photo_texture: Annotated[bool, Form(description="project the photo's own pixels onto the "
                                                                     "surface its camera sees (a refine: through "
                                                                     "the given camera)")] = True,
                     ) -> JobStatus:
        """Queue a reconstruction of `image` (with an optional `mask`, or scene `prompts`), or with
        `from_job` + `camera` a refine: stage 2 of that job again, seen by the given camera. The upload
        is decoded and checked here (422 with the reason), and refused with 503 busy when the queue is full."""
        if from_job:
            if image is not None or mask is not None:
                raise InputError("a refine (from_job) reuses that job's photo: send no image or mask")
            source, cam = job_id_field(from_job), camera_field(camera)
            with naming("camera"):
                job = jobs.submit_refine(source, cam, steps, photo_texture=photo_texture)
            return JobStatus(**job.public())
        if image is None:
            raise InputError("form field 'image' is required")
        if real_size is not None and mode != "object":
            raise InputError("form field 'real_size' is for object mode (a scene is in meters when its point map is)")
        picks = _prompts(prompts, settings.max_prompts)
        if picks is not None and (mode != "scene" or mask is not None):
            raise InputError("prompts pick objects in scene mode, without a mask")
        jobs.check_room()  # before decoding: a full queue costs no work
        data = await image.read()
        mask_data = await mask.read() if mask is not None else None

        def take_in() -> Job:
            inputs = decode_inputs(data, mask_data, mode, image.filename,
                                   mask.filename if mask is not None else None, max_objects=settings.max_objects)
            if picks is not None:
                with naming("prompts"):
                    check_prompts(*picks, (inputs.photo.shape[1], inputs.photo.shape[0]))
            return jobs.submit(inputs, mode, seed, steps, pnp=pnp or None, prompts=picks, real_size=real_size,
                               photo_texture=photo_texture)

        # off the event loop (a large photo must not stall other requests), one upload at a time
        job = await asyncio.get_running_loop().run_in_executor(intake, take_in)
        return JobStatus(**job.public())

    @api.get("/v1/jobs/{job_id}/preview", response_model=Preview, responses=error_responses(404))
    def preview(job_id: str) -> Preview:
        """Stage 1's answer before stage 2 runs: the solved camera and the occupied voxels (object mode)."""
        return Preview(**jobs.preview(job_id))

    @api.post("/v1/segment", response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "label PNG: 0 background, k object k"},
                         **error_responses(413, 422)})
    async def segment(image: Annotated[UploadFile, File(description="the photo")],
                      prompts: Annotated[str, Form(description='JSON {"points": [[x, y], ...], "boxes": '
                                                               '[[x0, y0, x1, y1], ...]}; empty: automatic')] = "",
                      mode: Annotated[Mode, Form(description="scene: segment-anything; object: what object mode "
                                                             "cuts out (the photo's alpha or the background "
                                                             "remover)")] = "scene") -> Response:
        """The objects a reconstruction would use, as a label image, before any reconstruction runs."""
        picks = _prompts(prompts, settings.max_prompts)
        if picks is not None and mode != "scene":
            raise InputError("prompts pick objects in scene mode")
        data = await image.read()

        def run() -> bytes:
            photo = load_photo(data, image.filename)
            if picks is not None:
                with naming("prompts"):
                    check_prompts(*picks, (photo.shape[1], photo.shape[0]))   # before the model loads
            pipe = jobs.pipeline()
            if mode == "object":
                alpha = pipe.object_mask(photo)
                return label_png(ObjectMasks(alpha[None], ["object"]))
            return label_png(pipe.segment(photo, picks))

        body = await asyncio.get_running_loop().run_in_executor(None, run)
        return Response(body, media_type="image/png")

    @api.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=error_responses(404))
    def status(job_id: str) -> JobStatus:
        """State (queued, running, done, failed, cancelled), stage, progress 0..1 and message."""
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id} (finished results are kept for a limited time)")
        return JobStatus(**job.public())

    @api.get("/v1/jobs/{job_id}/result", response_class=StreamingResponse,
             responses={200: {"content": {"application/zip": {}}, "description": "the bundle as a zip"},
                        **error_responses(404, 409, 410)})
    def result(job_id: str) -> StreamingResponse:
        """The result bundle (scene.json and its files) as a zip."""
        fh, _ = jobs.open_result(job_id)
        return StreamingResponse(_chunks(fh), media_type="application/zip",
                                 headers={"Content-Length": str(os.fstat(fh.fileno()).st_size),
                                          "Content-Disposition": f'attachment; filename="cupid-{job_id}.zip"'})

    @api.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=error_responses(404))
    def cancel(job_id: str) -> JobStatus:
        """Cancel a job (a queued one at once, a running one at its next stage or sampler step); on a
        finished job, free its result. Returns the job's status at that moment."""
        job = jobs.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return JobStatus(**job.public())

    return api


__all__ = ["ServerSettings", "create_app"]
