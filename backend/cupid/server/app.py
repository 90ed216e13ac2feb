"""The HTTP API (FastAPI): jobs, results, health; a door only the user's token opens.

Every request must carry `Authorization: Bearer <token>` (the token is random per start and written
to a 0600 file). Requests whose Host is not the bound address are refused (DNS rebinding), and so
are requests from a browser page of another origin; no CORS headers are ever sent. Uploads are
capped while they stream in, and an image's dimensions are checked before it is decoded.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import traceback
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import CupidError
from ..geometry.pnp import PNP_METHODS
from ..preprocess import load_mask, load_photo
from .jobs import JobQueue, PipelineFactory

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}


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

    def host_allowed(self, host: str) -> bool:
        """Is `host` (a Host header, `name:port`) an address of this server?

        Bound to loopback: any loopback spelling. Bound to one address: that address. Bound to all
        interfaces: `localhost` or any IP literal, never a DNS name (a rebinding attack needs one)."""
        name, port = split_host(host)
        if name is None or port != self.port:
            return False
        bound = self.host.strip("[]").lower()
        if bound in LOOPBACK:
            return name in LOOPBACK
        if bound in WILDCARD:
            return name == "localhost" or _is_ip(name)
        return name == bound or (_is_ip(name) and _is_ip(bound)
                                 and ipaddress.ip_address(name) == ipaddress.ip_address(bound))

    def origin_allowed(self, origin: str, host: str) -> bool:
        """A browser's Origin is accepted only for a same-origin request to this server."""
        return origin.lower() == f"http://{host.lower()}" and self.host_allowed(host)


def split_host(host: str) -> tuple[str | None, int | None]:
    """`name:port` / `[v6]:port` -> (lower-case name without brackets, port); (None, None) if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        if end < 0 or not rest.startswith(":"):
            return None, None
        port_text = rest[1:]
    else:
        name, sep, port_text = host.rpartition(":")
        if not sep or ":" in name:
            return None, None
    if not name or not port_text.isdigit():
        return None, None
    return name, int(port_text)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class Guard:
    """ASGI middleware: Host and Origin checks, the bearer token, and the upload cap."""

    def __init__(self, app: Any, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def _deny(self, send: Any, status: int, code: str, message: str) -> None:
        headers = [(b"content-type", b"application/json")]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": error_body(code, message)})

    def _too_large_message(self) -> str:
        return f"the upload is larger than {self.settings.max_upload_bytes / (1024 * 1024):g} MB"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.settings.host_allowed(host):
            await self._deny(send, 403, "forbidden_host", f"requests must be addressed to {self.settings.url}")
            return
        origin = headers.get("origin")
        if origin is not None and not self.settings.origin_allowed(origin, host):
            await self._deny(send, 403, "forbidden_origin", "cross-origin requests are not accepted")
            return
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
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
            await self._deny(send, 413, "upload_too_large", self._too_large_message())
            return
        # a body without a declared length (chunked) is counted as it streams in
        seen = 0
        too_large = False
        started = False

        async def counted_receive() -> dict:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise _TooLarge()
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if too_large:
                # the framework turned our _TooLarge into its own error answer: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _drain(receive, cap=16 * limit)
                    await self._deny(send, 413, "upload_too_large", self._too_large_message())
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                started = True
                await _drain(receive, cap=16 * limit)
                await self._deny(send, 413, "upload_too_large", self._too_large_message())


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


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}


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


def create_app(settings: ServerSettings, factory: PipelineFactory) -> Any:
    """The ASGI app (FastAPI wrapped in the Guard); `app.state.jobs` is its JobQueue."""
    jobs = JobQueue(factory, result_ttl=settings.result_ttl, preload=settings.preload)
    # no /docs or /redoc: they load scripts from a CDN and cannot send the bearer token;
    # the schema itself is at /openapi.json (behind the token like every route)
    api = FastAPI(title="CUPID backend", version=__version__, docs_url=None, redoc_url=None,
                  description="Single-photo 3D reconstruction jobs for the CUPID Blender extension.")
    api.state.jobs = jobs

    @api.exception_handler(CupidError)
    async def _cupid_error(_: Any, exc: CupidError) -> JSONResponse:
        return _err(exc.http_status if exc.http_status < 500 else 500, exc.code, exc.message)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _err(exc.status_code, code, detail)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Any, exc: RequestValidationError) -> JSONResponse:
        return _err(422, "bad_input", _validation_message(exc))

    @api.exception_handler(Exception)
    async def _unexpected(_: Any, exc: Exception) -> JSONResponse:
        traceback.print_exception(exc)
        return _err(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")

    @api.get("/v1/health")
    def health() -> dict:
        """Version, device, whether the model is loaded (or why loading it failed), and how many
        jobs wait or run."""
        return {"version": __version__, "device": settings.device, "model_loaded": jobs.model_loaded,
                "model_error": jobs.model_error, "queue_length": jobs.queue_length()}

    @api.post("/v1/jobs")
    async def submit(image: UploadFile = File(...), mask: UploadFile | None = File(None),
                     mode: str = Form("object"), seed: int = Form(0), steps: int = Form(0),
                     pnp: str = Form("")) -> JSONResponse:
        """Queue a reconstruction of `image` (with an optional `mask`); returns the job's id. `pnp`
        picks the camera solver (robust or dlt; empty: the model's default)."""
        if mode not in ("object", "scene"):
            return _err(422, "bad_input", f"mode must be 'object' or 'scene', got {mode!r}")
        if pnp and pnp not in PNP_METHODS:
            return _err(422, "bad_input", f"pnp must be one of {', '.join(PNP_METHODS)} (or empty), got {pnp!r}")
        if not (0 <= steps <= 500):
            return _err(422, "bad_input", "steps must be between 0 (the model's default) and 500")
        data = await image.read()
        if not data:
            return _err(422, "bad_input", "the uploaded image is empty")
        # decoding checks the file (InputError -> 422 with the reason) before any job exists; it runs
        # in a worker thread so a large photo does not stall other requests
        photo = await run_in_threadpool(load_photo, data)
        mask_data = None
        if mask is not None:
            mask_data = await mask.read()
            if mode == "object":
                await run_in_threadpool(load_mask, mask_data, (photo.shape[1], photo.shape[0]))
        job = jobs.submit(data, image.filename or "image", mask_data, mode, int(seed), int(steps), pnp=pnp or None)
        return JSONResponse({"id": job.id, **job.public()}, status_code=202)

    @api.get("/v1/jobs/{job_id}")
    def status(job_id: str) -> JSONResponse:
        """State (queued, running, done, failed, cancelled), stage, progress 0..1 and message."""
        job = jobs.get(job_id)
        if job is None:
            return _err(404, "not_found", f"no job {job_id} (finished results are kept for a limited time)")
        return JSONResponse(job.public())

    @api.get("/v1/jobs/{job_id}/result", response_class=FileResponse,
             responses={200: {"content": {"application/zip": {}}, "description": "the bundle as a zip"}})
    def result(job_id: str) -> Response:
        """The result bundle (scene.json and its files) as a zip."""
        job = jobs.get(job_id)
        if job is None:
            return _err(404, "not_found", f"no job {job_id}")
        if job.state != "done" or job.result_zip is None:
            return _err(409, "not_ready", f"job {job_id} is {job.state}, not done")
        jobs.mark_fetched(job)
        # the file is unlinked only by the janitor, after the grace period; an open file survives that
        return FileResponse(job.result_zip, media_type="application/zip", filename=f"cupid-{job_id}.zip")

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
