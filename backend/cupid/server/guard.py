"""The door: Host and Origin checks, the bearer token and the upload cap, as ASGI middleware.

A refusal never waits for a body it will not read (a request that declares 10^20 bytes and sends
none is answered at once): it is sent with `connection: close`, as is any answer the app gives
before the whole body was read (413 as the upload streams in), and the connection then lingers,
reading and dropping what the client still sends for a few seconds (`cupid.server.connections`),
so a client still uploading reads the answer rather than a reset (a wrong token must not read as
"backend not running"). No CORS headers are ever sent.
"""
from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.exceptions import HTTPException

from .settings import ServerSettings

CLOSE = (b"connection", b"close")


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class _Body:
    """The request body as the app reads it, counted against the cap."""

    def __init__(self, receive: Any, limit: int, message: str, expected: bool):
        self._receive, self.limit, self.message = receive, limit, message
        self.seen = 0
        self.done = not expected  # a request without a body has nothing left to read

    async def receive(self) -> dict:
        if self.done:
            return await self._receive()
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.seen > self.limit:
                raise HTTPException(413, self.message)  # the app answers it in the error envelope
        else:
            self.done = True
        return message


class Guard:
    """`app.add_middleware(Guard, settings=...)`: only requests addressed to this server, carrying
    its token, with a body under the cap, reach the routes."""

    def __init__(self, app: Any, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = _Body(receive, s.max_upload_bytes, f"the upload is larger than {s.max_upload_bytes / (1024 * 1024):g} MB",
                     expected=headers.get("content-length", "0") != "0" or "transfer-encoding" in headers)
        refusal = self._refusal(headers)
        if refusal is None:
            try:
                declared = int(headers.get("content-length", "0") or 0)
            except ValueError:
                declared = 0
            if declared > s.max_upload_bytes:
                refusal = (413, "upload_too_large", body.message)
        if refusal is not None:
            status, code, message = refusal
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            close = [CLOSE] if not body.done else []
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), *extra, *close]})
            await send({"type": "http.response.body", "body": error_body(code, message)})
            return

        async def send_closing_early(message: dict) -> None:
            if message["type"] == "http.response.start" and not body.done:
                # an answer given before the whole upload was read (413 as it streams in): no more
                # of it is read, and the connection cannot carry another request
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, body.receive, send_closing_early)

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str, str] | None:
        s = self.settings
        host = headers.get("host", "")
        if not s.host_allowed(host):
            return 403, "forbidden_host", f"requests must be addressed to {s.url}"
        origin = headers.get("origin")
        if origin is not None and not s.origin_allowed(origin, host):
            return 403, "forbidden_origin", "cross-origin requests are not accepted"
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode(), s.token.encode()):
            return 401, "unauthorized", ("wrong or missing token: a valid 'Authorization: Bearer <token>' header "
                                         "is required (the token is in the server's token file)")
        return None
