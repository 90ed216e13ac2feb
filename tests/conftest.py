"""Shared test helpers: where the reference fixtures live, and markers for optional stacks."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CUPID_SHARED", REPO_ROOT.parent / "shared")).resolve()
PARITY = SHARED / "fixtures" / "trellis_parity"
MANIFEST = SHARED / "fixtures" / "trellis_image_large_manifest.json"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"reference fixtures not found at {SHARED} (set CUPID_SHARED)")
    return SHARED


def free_port() -> int:
    """A loopback port nothing listens on (for 'backend is down' cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
