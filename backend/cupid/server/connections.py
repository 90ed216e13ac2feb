"""uvicorn's HTTP/1.1 protocol with two bounds it lacks: how many connections may be open at once,
and how long a connection may stay open without sending a request.

Past `max_connections`, a new connection is answered 503 `busy` and closed; a connection that sends
nothing for `idle_timeout` seconds is closed, as uvicorn already does between keep-alive requests.
"""
from __future__ import annotations

import json
from typing import Any

BUSY = json.dumps({"error": {"code": "busy", "message": "the CUPID backend has too many open connections; "
                                                       "try again"}}).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                 b"connection: close\r\ncontent-length: " + str(len(BUSY)).encode() + b"\r\n\r\n" + BUSY)


def bounded_protocol(max_connections: int) -> type:
    """An asyncio protocol class for `uvicorn.Config(http=...)`."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(BUSY_RESPONSE)
                transport.close()
                return
            # uvicorn times out idle keep-alive connections only after a first answer; a connection
            # that never sends a request would stay open forever
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    return BoundedH11Protocol
