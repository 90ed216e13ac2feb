"""HTTP client of the CUPID service, standard library only (it runs inside Blender).

Errors are two kinds a user can act on: `BackendUnavailable` (nothing answers at the URL: the
backend is not running, crashed, or the network is down) and `BackendError` (the service answered
with an error: its stable `code` and a clear `message`).
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
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
    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> tuple[bytes, str]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                raise BackendError(err.get("code", "error"), err.get("message", ""), exc.code) from None
            except (ValueError, KeyError, TypeError):
                raise BackendError("http_error", f"the backend answered HTTP {exc.code}", exc.code) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout,
                TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnavailable(f"CUPID backend is not running at {self.url} ({reason})") from None

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        data, _ = self._request(method, path, body, content_type)
        return json.loads(data)

    # ---------------------------------------------------------------- API
    def health(self) -> dict:
        return self._json("GET", "/v1/health")

    def submit(self, image_bytes: bytes, filename: str = "image.png", mask_bytes: bytes | None = None,
               mode: str = "object", seed: int = 0, steps: int = 0) -> str:
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []

        def field(name: str, value: str) -> None:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())

        def file(name: str, fname: str, data: bytes) -> None:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")

        file("image", Path(filename).name or "image.png", image_bytes)
        if mask_bytes is not None:
            file("mask", "mask.png", mask_bytes)
        field("mode", mode)
        field("seed", str(int(seed)))
        field("steps", str(int(steps)))
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self._json("POST", "/v1/jobs", body, f"multipart/form-data; boundary={boundary}")["id"]

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
        import io

        data, _ = self._request("GET", f"/v1/jobs/{job_id}/result")
        dest = Path(dest_dir).resolve()
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                target = (dest / info.filename).resolve()
                if info.filename.startswith(("/", "\\")) or ".." in Path(info.filename).parts \
                        or dest not in target.parents:
                    raise BackendError("bad_bundle", f"the result holds an unsafe path: {info.filename!r}")
            z.extractall(dest)
        return dest
