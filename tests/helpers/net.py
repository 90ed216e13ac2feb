"""Loopback networking helpers for the service and add-on tests."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on (for 'backend is down' cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
