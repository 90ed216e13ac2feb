"""Every official TRELLIS-image-large checkpoint: our network built on the meta device has exactly the
original state-dict names, shapes and dtypes (float16 torso where `use_fp16` is set)."""
from __future__ import annotations

import json

import pytest
import torch

from cupid.models import build_model
from tests.conftest import MANIFEST


def _entries() -> list[tuple[str, dict]]:
    if not MANIFEST.is_file():
        return [("manifest-missing", {})]
    return sorted(json.loads(MANIFEST.read_text()).items())


@pytest.mark.parametrize("stem,entry", _entries(), ids=[k for k, _ in _entries()])
def test_state_dict_matches_manifest(stem: str, entry: dict) -> None:
    assert entry, f"manifest not found at {MANIFEST}"
    with torch.device("meta"):
        model = build_model(entry["name"], entry["args"])
    sd = model.state_dict()
    got = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items()}
    want = {k: (list(s), d) for k, (s, d) in entry["tensors"].items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:10]} extra {extra[:10]}"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shape/dtype mismatches: {dict(list(wrong.items())[:10])}"
    # the manifest counts every state-dict entry (parameters and persistent buffers)
    assert sum(v.numel() for v in sd.values()) == entry["num_params"]
    assert all(t.is_meta for t in sd.values())
