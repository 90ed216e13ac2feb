"""Loopback networking helpers for the service and add-on tests."""
from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler


def free_port() -> int:
    """A loopback port nothing listens on (for 'backend is down' cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler for stand-in servers: no request log on stderr, one way to answer."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
