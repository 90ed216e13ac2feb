"""Uploads built to hurt: formats the backend never opens, object and prompt bombs, decoding memory.

Memory is measured, not assumed: tracemalloc counts what numpy and PIL allocate in this process, and
the server tests read the RSS of a real `cupid serve` process.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from helpers.bad_images import eps_file

from cupid.errors import InputError
from cupid.preprocess import load_photo
from cupid.scene.masks import read_mask


@pytest.fixture
def ghostscript_calls(monkeypatch):
    """Every call PIL makes to Ghostscript, recorded (and refused)."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy)
    return calls


def test_an_eps_photo_or_mask_never_reaches_ghostscript(ghostscript_calls):
    assert Image.open(io.BytesIO(eps_file())).format == "EPS"   # PIL on its own would open it
    with pytest.raises(InputError, match="not a readable image.*PNG, JPEG"):
        load_photo(eps_file(), "drawing.eps")
    with pytest.raises(InputError, match="not a readable image"):
        read_mask(eps_file())
    assert ghostscript_calls == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "BMP"])
def test_the_documented_formats_open(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, format=fmt)
    assert load_photo(buf.getvalue()).shape == (24, 32, 4)
