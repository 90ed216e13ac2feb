"""HTTP client of the CUPID service, standard library only (it runs inside Blender).

Errors are two kinds a user can act on: `BackendUnavailable` (nothing answers at the URL: the
backend is not running, crashed, or the network is down) and `BackendError` (the service answered
with an error: its stable `code` and a clear `message`).
"""
from __future__ import annotations

import http.client
import json
import shutil
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


class BackendUnavailable(Exception):
    """No CUPID service answers at the URL."""


class BackendError(Exception):
    """The service refused or failed a request."""

    def __init__(self, code: str, message: str, status: int = 0):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class CupidClient:
    """One service: its URL and token."""

    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # the service is local: never route it through an HTTP(S)_PROXY from the environment
        # (a proxy would see the token, and would reach its own loopback, not ours)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_token_file(cls, path: str | Path, timeout: float = 30.0) -> "CupidClient":
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["url"], data["token"], timeout)
        except FileNotFoundError:
            raise BackendUnavailable(f"CUPID backend is not running (no token file at {path})") from None
        except (ValueError, KeyError):
            raise BackendUnavailable(f"the CUPID token file {path} is unreadable; restart the backend") from None

    # ---------------------------------------------------------------- transport
    def _open(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> Any:
        """The open response of a successful request; errors mapped to the two client exceptions."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            return self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _backend_error(exc) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout,
                TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        reason = getattr(exc, "reason", exc)
        return BackendUnavailable(f"CUPID backend is not running at {self.url} ({reason})")

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> tuple[bytes, str]:
        resp = self._open(method, path, body, content_type)
        try:
            with resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        data, _ = self._request(method, path, body, content_type)
        return json.loads(data)

    # ---------------------------------------------------------------- API
    def health(self) -> dict:
        return self._json("GET", "/v1/health")

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

    def submit(self, image_bytes: bytes, filename: str = "image.png", mask_bytes: bytes | None = None,
               mode: str = "object", seed: int = 0, steps: int = 0) -> str:
        files = {"image": (Path(filename).name or "image.png", image_bytes)}
        if mask_bytes is not None:
            files["mask"] = ("mask.png", mask_bytes)
        fields = {"mode": mode, "seed": str(int(seed)), "steps": str(int(steps))}
        return json.loads(self._post_form("/v1/jobs", fields, files)[0])["id"]

    def refine(self, from_job: str, camera: dict, seed: int | None = None, steps: int | None = None) -> str:
        """Start a refine of a finished job: its photo, condition and structure with another camera
        (`{"K", "R", "t"}` in the photo's pixels); stage 2, decoding and export run again. An
        unknown or expired job is a BackendError with status 404."""
        fields = {"from_job": str(from_job), "camera": json.dumps({k: _plain(camera[k]) for k in ("K", "R", "t")})}
        if seed is not None:
            fields["seed"] = str(int(seed))
        if steps is not None:
            fields["steps"] = str(int(steps))
        return json.loads(self._post_form("/v1/jobs", fields, {})[0])["id"]

    def preview(self, job_id: str) -> dict:
        """Stage 1's answer while the job runs on: the camera and the occupied voxels (404 before)."""
        return self._json("GET", f"/v1/jobs/{job_id}/preview")

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
        return self._json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", f"/v1/jobs/{job_id}")

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

    def result(self, job_id: str, dest_dir: str | Path) -> Path:
        """Download the bundle zip and unpack it into `dest_dir` (refusing paths that leave it)."""
        resp = self._open("GET", f"/v1/jobs/{job_id}/result")
        with tempfile.TemporaryFile() as spool:
            try:
                with resp:
                    shutil.copyfileobj(resp, spool, 1 << 20)
            except (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError) as exc:
                raise self._unavailable(exc) from None
            spool.seek(0)
            try:
                with zipfile.ZipFile(spool) as z:
                    return safe_extract(z, dest_dir)
            except zipfile.BadZipFile as exc:
                raise BackendError("bad_bundle", f"the result of job {job_id} is not a valid zip ({exc})") from None


def _plain(value: Any) -> Any:
    """Numbers, lists or arrays (numpy's too) as JSON-ready nested lists of floats."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value)


def _backend_error(exc: urllib.error.HTTPError) -> BackendError:
    raw = exc.read()
    try:
        err = json.loads(raw)["error"]
        return BackendError(str(err.get("code", "error")), str(err.get("message", "")), exc.code)
    except (ValueError, KeyError, TypeError):
        return BackendError("http_error", f"the backend answered HTTP {exc.code}", exc.code)


def safe_extract(z: zipfile.ZipFile, dest_dir: str | Path) -> Path:
    """Unpack `z` into `dest_dir`, refusing any member that would land outside it (absolute paths,
    '..', drive letters, backslashes) or that is a symbolic link. Nothing is written if one is bad."""
    dest = Path(dest_dir).resolve()
    for info in z.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if (not name or name.startswith("/") or "\\" in name or ":" in name or ".." in parts or is_link
                or not (dest / name).resolve().is_relative_to(dest)):
            raise BackendError("bad_bundle", f"the result holds an unsafe path: {name!r}")
    dest.mkdir(parents=True, exist_ok=True)
    z.extractall(dest)
    return dest
