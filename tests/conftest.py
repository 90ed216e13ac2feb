"""Where the reference fixtures live (tests/fixtures, or $CUPID_SHARED/fixtures). Shared helpers: tests/helpers/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference fixtures ship with the repo (tests/fixtures); CUPID_SHARED points at another copy.
SHARED = Path(os.environ["CUPID_SHARED"]).resolve() if os.environ.get("CUPID_SHARED") else REPO_ROOT / "tests"
FIXTURES = SHARED / "fixtures"
PARITY = FIXTURES / "trellis_parity"
MANIFEST = FIXTURES / "trellis_image_large_manifest.json"




@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model of `cupid make-tiny-model`, made once per test session (tests only read it)."""
    from cupid.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model-shared")
