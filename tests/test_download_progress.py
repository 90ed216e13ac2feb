"""`cupid download --json-progress`: the bytes of the whole download, file by file, as JSON lines (the
add-on's set-up shows them on its progress bar), through huggingface_hub's real client against a
stand-in Hub on loopback; the files land in the cache as `cupid download` always left them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from cupid import config
from tests.helpers.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]


def _checkpoint() -> tuple[bytes, bytes]:
    return json.dumps({"name": "X", "args": {}}).encode(), save({"w": np.zeros(4, np.float32)})


def _repos() -> dict[str, dict[str, bytes]]:
    """Every repository `cupid download` fetches, with small files matching its patterns (one of 24 MB:
    huggingface_hub reads a download in 10 MB chunks)."""
    cfg, weights = _checkpoint()
    repos: dict[str, dict[str, bytes]] = {}
    for repo, patterns in config.DOWNLOAD_PATTERNS.items():
        files: dict[str, bytes] = {}
        for pat in patterns:
            if pat == "ckpts/*" or pat.endswith(".*"):
                stem = "ckpts/model" if pat == "ckpts/*" else pat[:-2]
                files[stem + ".json"], files[stem + ".safetensors"] = cfg, weights
            else:
                files[pat] = b"{}" if pat.endswith(".json") else os.urandom(4096)
        files["README.md"] = b"not asked for"
        repos[repo] = files
    repos[config.MOGE_ID]["model.pt"] = os.urandom(24 * 1024 * 1024)
    return repos


def test_json_progress_counts_every_byte_of_the_download(tmp_path):
    repos = _repos()
    wanted = {f"{r}/{n}": len(b) for r, files in repos.items() for n, b in files.items() if n != "README.md"}
    with FakeHub(repos, chunk=1024 * 1024, delay=0.05) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO / "backend")}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run([sys.executable, "-m", "cupid", "download", "--json-progress", "--cache-dir",
                               str(tmp_path / "cache")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    total = sum(wanted.values())
    assert events and all(e["total"] == total for e in events)
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == total                 # never backwards, ends at the total
    assert {e["file"] for e in events} == set(wanted)                  # every file named, nothing else
    big = f"{config.MOGE_ID}/model.pt"
    first = next(i for i, e in enumerate(events) if e["file"] == big)
    partial = [e["done"] - events[first - 1]["done"] for e in events if e["file"] == big]   # its own bytes
    assert len(partial) >= 2 and 0 < partial[0] < wanted[big] and partial[-1] == wanted[big], partial
    # the cache is what a plain `cupid download` leaves: offline runs find every file
    snap = tmp_path / "cache" / f"models--{config.MOGE_ID.replace('/', '--')}" / "snapshots"
    assert [p.name for p in snap.glob("*/model.pt")] == ["model.pt"]
    assert "README.md" not in {p.name for p in snap.rglob("*")}
