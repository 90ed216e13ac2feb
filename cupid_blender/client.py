"""HTTP client of the CUPID service, standard library only (it runs inside Blender).

Errors are two kinds a user can act on: `BackendUnavailable` (nothing answers at the URL: the
backend is not running, crashed, or the network is down) and `BackendError` (the service answered
with an error: its stable `code` and a clear `message`). Besides the service's own codes (bad_input,
busy, disk_full, expired, ...) the client names two situations itself: `WRONG_TOKEN` (the service
refused the token) and `BACKEND_RESTARTED` (the service restarted since the job was submitted and
the job is gone: run it again), told apart by the instance id `/v1/health` reports.

A result zip is refused before anything is extracted when it would write more than
`max_bundle_bytes`, holds more than `max_bundle_members` entries, decompresses implausibly well
(a zip bomb), or names a path outside the destination.
"""
from __future__ import annotations

import http.client
import json
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

WRONG_TOKEN = "unauthorized"
BACKEND_RESTARTED = "backend_restarted"

MAX_BUNDLE_BYTES = 4 * 1024 ** 3    # what one result may write to disk
MAX_BUNDLE_MEMBERS = 2000           # files in one result (a scene object takes about five)
BOMB_FLOOR_BYTES = 256 * 1024 ** 2  # under this, any compression ratio is accepted
BOMB_RATIO = 100                    # meshes, textures and PLYs compress 1-3x; a zip bomb 1000x

_NETWORK_ERRORS = (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError)


class BackendUnavailable(Exception):
    """No CUPID service answers at the URL."""


class BackendError(Exception):
    """The service refused or failed a request (or the client refused what it sent)."""

    def __init__(self, code: str, message: str, status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.retry_after = retry_after  # seconds, from a 503's Retry-After


class CupidClient:
    """One service: its URL and token (re-read from `token_file` when the service restarts)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0, *, token_file: str | Path | None = None,
                 explain_unavailable: Callable[[], str | None] | None = None,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES, max_bundle_members: int = MAX_BUNDLE_MEMBERS):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.token_file = Path(token_file) if token_file is not None else None
        self.explain_unavailable = explain_unavailable
        self.max_bundle_bytes, self.max_bundle_members = max_bundle_bytes, max_bundle_members
        self.instance: str | None = None         # the service run this client last saw (None: not asked yet)
        self._job_instance: dict[str, str] = {}  # job id -> the run it was submitted to
        self._authenticated = False
        # the service is local: never route it through an HTTP(S)_PROXY from the environment
        # (a proxy would see the token, and would reach its own loopback, not ours)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_token_file(cls, path: str | Path, timeout: float = 30.0) -> "CupidClient":
        url, token = _read_token_file(Path(path))
        return cls(url, token, timeout, token_file=path)

    # ---------------------------------------------------------------- transport
    def _open(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> Any:
        """The open response of a successful request; errors mapped to the two client exceptions.
        A refused token or a dead URL is retried once if the token file now names another run."""
        try:
            return self._open_once(method, path, body, content_type)
        except (BackendUnavailable, BackendError) as exc:
            retryable = isinstance(exc, BackendUnavailable) or exc.status == 401
            if not (retryable and self._reload_token_file()):
                raise
        return self._open_once(method, path, body, content_type)

    def _open_once(self, method: str, path: str, body: bytes | None, content_type: str | None) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            resp = self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._backend_error(exc) from None
        except (urllib.error.URLError, *_NETWORK_ERRORS) as exc:
            raise self._unavailable(exc) from None
        self._authenticated = True
        return resp

    def _reload_token_file(self) -> bool:
        """Switch to the URL and token now in the token file, if they changed."""
        if self.token_file is None:
            return False
        try:
            url, token = _read_token_file(self.token_file)
        except BackendUnavailable:
            return False
        if (url.rstrip("/"), token) == (self.url, self.token):
            return False
        self.url, self.token, self._authenticated = url.rstrip("/"), token, False
        return True

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        reason = getattr(exc, "reason", exc)
        note = self.explain_unavailable() if self.explain_unavailable is not None else None
        return BackendUnavailable(note or f"CUPID backend is not running at {self.url} ({reason})")

    def _backend_error(self, exc: urllib.error.HTTPError) -> BackendError:
        err = _backend_error(exc)
        if exc.code == 401:
            if self._authenticated:  # the token worked a moment ago: a new run has a new token
                return BackendError(BACKEND_RESTARTED, f"the CUPID backend at {self.url} restarted (its token "
                                                       f"changed); run it again", 401)
            return BackendError(WRONG_TOKEN, f"wrong token: the CUPID backend at {self.url} refused it; copy "
                                             f"the token from the backend's token file into the add-on "
                                             f"preferences", 401)
        return err

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> tuple[bytes, str]:
        resp = self._open(method, path, body, content_type)
        try:
            with resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except _NETWORK_ERRORS as exc:
            raise self._unavailable(exc) from None

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        data, _ = self._request(method, path, body, content_type)
        return json.loads(data)

    def _job_call(self, job_id: str, call: Callable[[], Any]) -> Any:
        """Run a request about a job; a 404 for a job this client submitted to an earlier run of the
        service becomes BACKEND_RESTARTED."""
        try:
            return call()
        except BackendError as exc:
            if exc.status != 404 or job_id not in self._job_instance:
                raise
            before = self._job_instance[job_id]
            try:
                now = self.health().get("instance")
            except (BackendError, BackendUnavailable):
                raise exc from None
            if now and before and now != before:
                raise BackendError(BACKEND_RESTARTED, f"the CUPID backend restarted since job {job_id} was "
                                                      f"submitted, and the job is gone; run it again",
                                   404) from None
            raise

    # ---------------------------------------------------------------- API
    def health(self) -> dict:
        h = self._json("GET", "/v1/health")
        self.instance = str(h.get("instance") or "")  # "": a service too old to say
        return h

    def _post_form(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
        """POST a multipart form: text `fields` and `files` (name -> (file name, bytes))."""
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, (fname, data) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self._request("POST", path, body, f"multipart/form-data; boundary={boundary}")

    def _start_job(self, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> str:
        """POST /v1/jobs; the job's id, remembered with the run of the service that has it."""
        if self.instance is None:
            self.health()  # which run of the service gets the job (to tell a restart later)
        job_id = json.loads(self._post_form("/v1/jobs", fields, files)[0])["id"]
        self._job_instance[job_id] = self.instance or ""
        return job_id

    def submit(self, image_bytes: bytes, filename: str = "image.png", mask_bytes: bytes | None = None,
               mode: str = "object", seed: int = 0, steps: int = 0, real_size: bool | None = None,
               photo_texture: bool = True) -> str:
        """Start a job; `real_size` (object mode): measure in meters (None: the backend's default);
        `photo_texture` projects the photo's pixels onto what its camera sees."""
        files = {"image": (Path(filename).name or "image.png", image_bytes)}
        if mask_bytes is not None:
            files["mask"] = ("mask.png", mask_bytes)
        fields = {"mode": mode, "seed": str(int(seed)), "steps": str(int(steps)), "photo_texture": _flag(photo_texture)}
        if real_size is not None:
            fields["real_size"] = _flag(real_size)
        return self._start_job(fields, files)

    def refine(self, from_job: str, camera: dict, seed: int | None = None, steps: int | None = None,
               photo_texture: bool = True) -> str:
        """Start a refine of a finished job: its photo, condition and structure with another camera
        (`{"K", "R", "t"}` in the photo's pixels and the object's own frame); stage 2, decoding and export run
        again (the photo texture through that camera). An unknown or expired job is a BackendError with status
        404."""
        fields = {"from_job": str(from_job), "camera": json.dumps({k: _plain(camera[k]) for k in ("K", "R", "t")}),
                  "photo_texture": _flag(photo_texture)}
        if seed is not None:
            fields["seed"] = str(int(seed))
        if steps is not None:
            fields["steps"] = str(int(steps))
        return self._start_job(fields, {})

    def preview(self, job_id: str) -> dict:
        """Stage 1's answer while the job runs on: the camera and the occupied voxels (404 before)."""
        return self._job_call(job_id, lambda: self._json("GET", f"/v1/jobs/{job_id}/preview"))

    def segment(self, image_bytes: bytes, filename: str = "image.png", prompts: dict | None = None,
                mode: str = "scene") -> bytes:
        """The label PNG of a photo (0 = background, k = object k): in scene mode one object per
        prompt (`{"points": [[x, y], ...], "boxes": [[x0, y0, x1, y1], ...]}`, photo pixels), or
        segment-anything's automatic masks without prompts; in object mode the cut-out (1 = object)."""
        fields = {"mode": mode}
        if prompts is not None:
            fields["prompts"] = json.dumps(prompts)
        data, ctype = self._post_form("/v1/segment", fields, {"image": (Path(filename).name or "image.png",
                                                                         image_bytes)})
        if not data.startswith(b"\x89PNG"):
            raise BackendError("bad_answer", f"the backend's segmentation is not a PNG ({ctype or 'no type'})")
        return data

    def status(self, job_id: str) -> dict:
        return self._job_call(job_id, lambda: self._json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict:
        """Cancel a job; on a finished one, free its result on the service."""
        return self._job_call(job_id, lambda: self._json("DELETE", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, poll: float = 0.25, on_progress: Callable[[dict], None] | None = None,
             should_cancel: Callable[[], bool] | None = None, timeout: float | None = None) -> dict:
        """Poll until the job ends; cancels it when `should_cancel()` turns true. Returns its last status."""
        start = time.monotonic()
        cancelled = False
        while True:
            st = self.status(job_id)
            if on_progress is not None:
                on_progress(st)
            if st["state"] in ("done", "failed", "cancelled"):
                return st
            if should_cancel is not None and should_cancel() and not cancelled:
                self.cancel(job_id)
                cancelled = True
            if timeout is not None and time.monotonic() - start > timeout:
                raise BackendError("timeout", f"job {job_id} did not finish in {timeout:.0f} s")
            time.sleep(poll)

    def result(self, job_id: str, dest_dir: str | Path, free: bool = True) -> Path:
        """Download the bundle zip and unpack it into `dest_dir` (refusing unsafe paths and zip bombs
        before writing anything); then, with `free`, let the service delete its copy."""
        resp = self._job_call(job_id, lambda: self._open("GET", f"/v1/jobs/{job_id}/result"))
        with tempfile.TemporaryFile() as spool:
            try:
                with resp:
                    _copy_capped(resp, spool, self.max_bundle_bytes)
            except _NETWORK_ERRORS as exc:
                raise self._unavailable(exc) from None
            spool.seek(0)
            try:
                with zipfile.ZipFile(spool) as z:
                    out = safe_extract(z, dest_dir, max_bytes=self.max_bundle_bytes,
                                       max_members=self.max_bundle_members)
            except zipfile.BadZipFile as exc:
                raise BackendError("bad_bundle", f"the result of job {job_id} is not a valid zip ({exc})") from None
        if free:
            try:
                self.cancel(job_id)
            except (BackendError, BackendUnavailable):
                pass  # the service forgets it after a grace period anyway
        return out


def _flag(value: Any) -> str:
    """A yes/no form field as the service reads it."""
    return "true" if value else "false"


def _plain(value: Any) -> Any:
    """Numbers, lists or arrays (numpy's too) as JSON-ready nested lists of floats."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value)


def _read_token_file(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text())
        return str(data["url"]), str(data["token"])
    except FileNotFoundError:
        raise BackendUnavailable(f"CUPID backend is not running (no token file at {path})") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise BackendUnavailable(f"the CUPID token file {path} is unreadable; restart the backend") from None


def _backend_error(exc: urllib.error.HTTPError) -> BackendError:
    raw = exc.read()
    retry = exc.headers.get("Retry-After") if exc.headers is not None else None
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    try:
        err = json.loads(raw)["error"]
        return BackendError(str(err.get("code", "error")), str(err.get("message", "")), exc.code, retry_after)
    except (ValueError, KeyError, TypeError):
        return BackendError("http_error", f"the backend answered HTTP {exc.code}", exc.code, retry_after)


def _copy_capped(src: Any, dst: Any, limit: int) -> None:
    copied = 0
    while chunk := src.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise BackendError("bad_bundle", f"the result is larger than {limit / 1024 ** 2:.0f} MB; refused")
        dst.write(chunk)


def safe_extract(z: zipfile.ZipFile, dest_dir: str | Path, *, max_bytes: int = MAX_BUNDLE_BYTES,
                 max_members: int = MAX_BUNDLE_MEMBERS) -> Path:
    """Unpack `z` into `dest_dir`, refusing any member that would land outside it (absolute paths,
    '..', drive letters, backslashes) or that is a symbolic link, and refusing a zip bomb: more than
    `max_members` entries, more than `max_bytes` in all, or a large total that decompresses more
    than BOMB_RATIO times. Nothing is written if one check fails. (zipfile never writes more than
    a member's declared size, so the declared sizes bound what lands on disk.)"""
    infos = z.infolist()
    if len(infos) > max_members:
        raise BackendError("bad_bundle", f"the result holds {len(infos)} files, more than {max_members}; refused")
    total = sum(i.file_size for i in infos)
    packed = max(sum(i.compress_size for i in infos), 1)
    if total > max_bytes or (total > BOMB_FLOOR_BYTES and total / packed > BOMB_RATIO):
        raise BackendError("bad_bundle", f"the result would unpack to {total / 1024 ** 2:.0f} MB from "
                                         f"{packed / 1024 ** 2:.1f} MB (the limit is {max_bytes / 1024 ** 2:.0f} MB, "
                                         f"{BOMB_RATIO}x compression); refused as a zip bomb")
    dest = Path(dest_dir).resolve()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if (not name or name.startswith("/") or "\\" in name or ":" in name or ".." in parts or is_link
                or not (dest / name).resolve().is_relative_to(dest)):
            raise BackendError("bad_bundle", f"the result holds an unsafe path: {name!r}")
    dest.mkdir(parents=True, exist_ok=True)
    z.extractall(dest)
    return dest


__all__ = ["BackendError", "BackendUnavailable", "CupidClient", "safe_extract", "WRONG_TOKEN",
           "BACKEND_RESTARTED", "MAX_BUNDLE_BYTES", "MAX_BUNDLE_MEMBERS"]
