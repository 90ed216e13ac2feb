"""uvicorn's HTTP/1.1 protocol with the bounds it lacks against slow and hostile clients.

Per connection (each limit a `ServerSettings` field, a `cupid serve` flag):

- `max_connections` open at once. One more first takes the place of a connection that holds a slot
  without using it: one closing, then the one waiting longest for a request head (idle keep-alive
  included), then the slowest body below the minimum rate. Only when every slot does work is the new
  connection answered 503 `busy` and closed. 64 sockets that send half a request line hold nothing.
- `idle_timeout`: a connection that sends nothing (no first byte, or nothing after an answer) is closed.
- `header_timeout`: the request line and headers must arrive within it (408 and close), however slowly
  they trickle in.
- `min_body_rate` over every `body_timeout` seconds: a body that brings fewer bytes (while the app
  reads it) is cut off with 408.
- `write_timeout`: a reader that stops reading an answer (its buffers full) is dropped after it.

A refusal never waits for a body it will not read: the app answers with `connection: close` (see
`guard.py`) and the connection then *lingers*: its write side is shut (the answer is complete) while
whatever the client still sends is read and dropped, for at most `LINGER_S` seconds, so a client still
uploading reads the answer rather than a reset, and a client that declared a huge body and sends
nothing is answered at once.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .settings import ServerSettings

LINGER_S = 5.0     # how long a refused upload may go on being read (and dropped) after its answer


def _answer(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra + b"connection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


BUSY_RESPONSE = _answer(b"503 Service Unavailable", "busy", "the CUPID backend has too many open connections; "
                        "try again", b"retry-after: 1\r\n")
SLOW_HEAD_RESPONSE = _answer(b"408 Request Timeout", "request_timeout", "the request line and headers did not "
                             "arrive in time")
SLOW_BODY_RESPONSE = _answer(b"408 Request Timeout", "request_timeout", "the request body arrived too slowly")


class _Transport:
    """The connection's transport as uvicorn sees it: `close()` lingers when a body is still coming."""

    def __init__(self, transport: Any, protocol: Any):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_gracefully()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


def bounded_protocol(settings: ServerSettings) -> type:
    """An asyncio protocol class for `uvicorn.Config(http=...)`, bounded by `settings`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    s = settings

    class BoundedH11Protocol(H11Protocol):
        lingering = False
        lost = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self.raw = transport
            self.phase, self.since, self.got = "head", time.monotonic(), 0   # bytes in this phase / window
            self.timers: dict[str, Any] = {}
            super().connection_made(_Transport(transport, self))
            others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
            if len(others) >= s.max_connections:
                victim = min(others, key=lambda c: getattr(c, "eviction_rank", lambda: (9, 0.0))())
                if getattr(victim, "eviction_rank", lambda: (9, 0.0))()[0] >= 9:
                    transport.write(BUSY_RESPONSE)
                    transport.close()
                    return
                victim.drop()
            # uvicorn times out idle keep-alive connections only after a first answer; a connection
            # that never sends a request would stay open forever
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
            self._arm("head", s.header_timeout, self._head_late)

        # ---------------------------------------------------------------- timers
        def _arm(self, name: str, delay: float, callback: Any) -> None:
            self._disarm(name)
            self.timers[name] = self.loop.call_later(delay, callback)

        def _disarm(self, name: str) -> None:
            timer = self.timers.pop(name, None)
            if timer is not None:
                timer.cancel()

        def _enter(self, phase: str) -> None:
            self.phase, self.since, self.got = phase, time.monotonic(), 0

        def _head_late(self) -> None:
            self.timers.pop("head", None)
            if self.phase == "head" and not self.raw.is_closing():
                if self.got:   # a head begun and not finished (an idle connection just closes)
                    self.raw.write(SLOW_HEAD_RESPONSE)
                self.raw.close()

        def _body_check(self) -> None:
            self.timers.pop("body", None)
            if self.phase != "body" or self.raw.is_closing():
                return
            if self.got < s.min_body_rate * s.body_timeout and not self.flow.read_paused:
                self.raw.write(SLOW_BODY_RESPONSE)
                self.raw.close()
                return
            self.since, self.got = time.monotonic(), 0   # the next window
            self._arm("body", s.body_timeout, self._body_check)

        def _write_late(self) -> None:
            self.timers.pop("write", None)
            self.raw.abort()   # its buffers are full: close() would wait for them to drain

        # ---------------------------------------------------------------- the cap
        def eviction_rank(self) -> tuple[int, float]:
            """Lower goes first when a new connection needs a slot: (class, -seconds held); class 9 is
            a connection doing work, never taken."""
            now = time.monotonic()
            if self.lingering:
                return 0, self.since - now
            if self.phase == "head":
                return 1, self.since - now
            if self.phase == "body" and now - self.since >= 1.0 and not self.flow.read_paused \
                    and self.got < s.min_body_rate * (now - self.since):
                return 2, self.got / (now - self.since)
            return 9, 0.0

        def drop(self) -> None:
            """Give this connection's slot to a newer one (a request head half sent gets its 408)."""
            if self.phase == "head" and self.got:
                self.raw.write(SLOW_HEAD_RESPONSE)
            elif self.phase == "body":
                self.raw.write(SLOW_BODY_RESPONSE)
            if self.lingering:
                self.raw.abort()
            else:
                self.raw.close()

        # ---------------------------------------------------------------- events
        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return   # the rest of a body nobody reads
            self.got += len(data)
            super().data_received(data)
            self._track()

        def _track(self) -> None:
            """Follow the request's phase (head, body, the app's turn) as h11 sees the client."""
            their = self.conn.their_state
            phase = "head" if their is h11.IDLE else "body" if their is h11.SEND_BODY else "app"
            if phase == self.phase or self.raw.is_closing():
                return
            self._disarm("head")
            self._disarm("body")
            self._enter(phase)
            if phase == "head":
                self._arm("head", s.header_timeout, self._head_late)
            elif phase == "body":
                self._arm("body", s.body_timeout, self._body_check)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.raw.is_closing() or self.lingering:
                return
            if self.conn.their_state is h11.SEND_BODY:   # answered before its body was read
                self.close_gracefully()
                return
            self._track()   # the next request on this connection gets its own deadline

        def close_gracefully(self) -> None:
            """Close; while the client is still sending a body, shut the write side (the answer is
            complete) and read and drop the rest for up to LINGER_S before closing."""
            if self.lingering or self.lost or self.raw.is_closing():
                return
            if self.conn.their_state is not h11.SEND_BODY or not self.raw.can_write_eof():
                self.raw.close()
                return
            self.lingering = True
            self.since = time.monotonic()
            for name in list(self.timers):
                self._disarm(name)
            self._unset_keepalive_if_required()
            self.raw.write_eof()
            self.raw.resume_reading()
            self.timers["linger"] = self.loop.call_later(LINGER_S, self.raw.abort)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._arm("write", s.write_timeout, self._write_late)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._disarm("write")

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True
            for name in list(self.timers):
                self._disarm(name)
            super().connection_lost(exc)

    return BoundedH11Protocol
