"""The HTTP API (FastAPI): jobs, results, health; a door only the user's token opens.

Every request must carry `Authorization: Bearer <token>` (the token is random per start and written
to a 0600 file). Requests whose Host is not the bound address are refused (DNS rebinding), and so
are requests from a browser page of another origin; no CORS headers are ever sent. Uploads are
capped while they stream in, and an image's dimensions are checked before it is decoded.
"""
from __future__ import annotations

import hmac
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..errors import CupidError
from ..preprocess import load_mask, load_photo
from .jobs import JobQueue, PipelineFactory

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass
class ServerSettings:
    host: str
    port: int
    token: str
    device: str = "auto"
    max_upload_bytes: int = 64 * 1024 * 1024
    result_ttl: float = 3600.0
    preload: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def allowed_hosts(self) -> set[str]:
        hosts = {self.host} | (LOOPBACK if self.host in LOOPBACK else set())
        return {f"{h}:{self.port}" for h in hosts} | ({f"[{self.host}]:{self.port}"} if ":" in self.host else set())


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class Guard:
    """ASGI middleware: Host and Origin checks, the bearer token, and the upload cap."""

    def __init__(self, app: Any, settings: ServerSettings):
        self.app = app
        self.settings = settings
        self.hosts = settings.allowed_hosts()
        self.origins = {f"http://{h}" for h in self.hosts}

    async def _deny(self, send: Any, status: int, code: str, message: str) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": error_body(code, message)})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if host not in self.hosts:
            await self._deny(send, 403, "forbidden_host", f"requests must be addressed to {self.settings.url}")
            return
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins:
            await self._deny(send, 403, "forbidden_origin", "cross-origin requests are not accepted")
            return
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), self.settings.token.encode()):
            await self._deny(send, 401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is "
                                                        "required (the token is in the server's token file)")
            return
        limit = self.settings.max_upload_bytes
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            # read (and drop) the body first: a client still sending would see a reset, not our answer
            await _drain(receive, cap=16 * limit)
            await self._deny(send, 413, "upload_too_large", f"the upload is larger than {limit // (1024 * 1024)} MB")
            return
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            await _drain(receive, cap=16 * limit)
            if not started:
                await self._deny(send, 413, "upload_too_large",
                                 f"the upload is larger than {limit // (1024 * 1024)} MB")


class _TooLarge(Exception):
    pass


async def _drain(receive: Any, cap: int) -> None:
    """Consume a request body up to `cap` bytes."""
    seen = 0
    while seen <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _zip_dir(directory: Any) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(directory.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(directory).as_posix())
    return buf.getvalue()


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(settings: ServerSettings, factory: PipelineFactory) -> Any:
    """The ASGI app (FastAPI wrapped in the Guard); `app.state.jobs` is its JobQueue."""
    jobs = JobQueue(factory, result_ttl=settings.result_ttl, preload=settings.preload)
    api = FastAPI(title="CUPID backend", version=__version__,
                  description="Single-photo 3D reconstruction jobs for the CUPID Blender extension.")
    api.state.jobs = jobs

    @api.exception_handler(CupidError)
    async def _cupid_error(_: Any, exc: CupidError) -> JSONResponse:
        return _err(exc.http_status if exc.http_status < 500 else 500, exc.code, exc.message)

    @api.get("/v1/health")
    def health() -> dict:
        """Version, device, whether the model is loaded, and how many jobs wait or run."""
        return {"version": __version__, "device": settings.device, "model_loaded": jobs.model_loaded,
                "queue_length": jobs.queue_length()}

    @api.post("/v1/jobs")
    async def submit(image: UploadFile = File(...), mask: UploadFile | None = File(None),
                     mode: str = Form("object"), seed: int = Form(0), steps: int = Form(0)) -> JSONResponse:
        """Queue a reconstruction of `image` (with an optional `mask`); returns the job's id."""
        if mode not in ("object", "scene"):
            return _err(422, "bad_input", f"mode must be 'object' or 'scene', got {mode!r}")
        if not (0 <= steps <= 500):
            return _err(422, "bad_input", "steps must be between 0 (the model's default) and 500")
        data = await image.read()
        if not data:
            return _err(422, "bad_input", "the uploaded image is empty")
        photo = load_photo(data)  # InputError -> 422 with the reason, before any job exists
        mask_data = None
        if mask is not None:
            mask_data = await mask.read()
            if mode == "object":
                load_mask(mask_data, (photo.shape[1], photo.shape[0]))
        job = jobs.submit(data, image.filename or "image", mask_data, mode, int(seed), int(steps))
        return JSONResponse({"id": job.id, **job.public()}, status_code=202)

    @api.get("/v1/jobs/{job_id}")
    def status(job_id: str) -> JSONResponse:
        """State (queued, running, done, failed, cancelled), stage, progress 0..1 and message."""
        job = jobs.get(job_id)
        if job is None:
            return _err(404, "not_found", f"no job {job_id} (finished results are kept for a limited time)")
        return JSONResponse(job.public())

    @api.get("/v1/jobs/{job_id}/result")
    def result(job_id: str) -> Response:
        """The result bundle (scene.json and its files) as a zip."""
        job = jobs.get(job_id)
        if job is None:
            return _err(404, "not_found", f"no job {job_id}")
        if job.state != "done" or job.result_dir is None:
            return _err(409, "not_ready", f"job {job_id} is {job.state}, not done")
        body = _zip_dir(job.result_dir)
        jobs.mark_fetched(job)
        return Response(body, media_type="application/zip",
                        headers={"content-disposition": f'attachment; filename="cupid-{job_id}.zip"'})

    @api.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str) -> JSONResponse:
        """Cancel a job: a queued one at once, a running one at the next sampler step."""
        job = jobs.cancel(job_id)
        if job is None:
            return _err(404, "not_found", f"no job {job_id}")
        return JSONResponse(job.public())

    guarded = Guard(api, settings)
    guarded.state = api.state  # type: ignore[attr-defined]
    guarded.api = api  # type: ignore[attr-defined]
    return guarded


__all__ = ["ServerSettings", "create_app"]
