"""`cupid download`: fetch everything a run needs into the weights cache, resumably, and check it.

After it, `HF_HUB_OFFLINE=1 cupid reconstruct ...` runs with no network at all: the CUPID release, the
TRELLIS-image-large parts it uses, DINOv2 and the point-map model (see `config.DOWNLOAD_PATTERNS`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import config
from ..errors import CliError
from ..hub import WEIGHTS_DIR_ENV, cache_dir, hub_files, hub_snapshot

NAME = "download"
HELP = "download the official CUPID weights and every model a run needs from Hugging Face"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=config.CUPID_MODEL_ID, help="Hugging Face id of the CUPID release")
    p.add_argument("--cache-dir", default=None,
                   help=f"where to keep the weights (default: ${WEIGHTS_DIR_ENV}, else the Hugging Face cache); "
                        f"runs read the same place when {WEIGHTS_DIR_ENV} names it")
    p.add_argument("--json-progress", action="store_true",
                   help='also print progress as JSON lines on stdout, {"file", "done", "total"} in bytes of the '
                        'whole download (the Blender add-on\'s set-up reads them)')


def _verify(folder: Path) -> None:
    """Every checkpoint JSON has its safetensors beside it, and the safetensors headers parse."""
    from safetensors import safe_open

    for cfg in folder.glob("ckpts/*.json"):
        weights = cfg.with_suffix(".safetensors")
        if not weights.is_file():
            raise CliError(f"{cfg.name} has no {weights.name} beside it: the download is incomplete, run it again")
        json.loads(cfg.read_text())
        with safe_open(str(weights), framework="pt") as f:
            if not list(f.keys()):
                raise CliError(f"{weights} holds no tensors")


def download_plan(model: str) -> dict[str, list[str]]:
    """Repository -> file patterns, the given CUPID model's repo first."""
    plan = {model: config.DOWNLOAD_PATTERNS[config.CUPID_MODEL_ID]}
    for repo, patterns in config.DOWNLOAD_PATTERNS.items():
        if repo != config.CUPID_MODEL_ID:
            plan[repo] = patterns
    return plan


class JsonProgress:
    """Bytes of the whole download as JSON lines (at most ~4 a second, and every file's end)."""

    def __init__(self, plan: dict[str, list[tuple[str, int]]], out=None) -> None:
        self.total = sum(size for files in plan.values() for _, size in files)
        self.out = out or sys.stdout
        self.finished, self.repo, self._last = 0, "", 0.0
        self.completed: set[tuple[str, str]] = set()
        self.sizes = {repo: dict(files) for repo, files in plan.items()}

    def file_bytes(self, name: str, done: int) -> None:
        """hub_snapshot's report: `done` bytes of `name` (of the current repository) are on disk."""
        key = (self.repo, name)
        if key in self.completed:
            return
        size = self.sizes[self.repo].get(name, 0)
        complete = done >= size
        now = time.monotonic()
        if not complete and now - self._last < 0.25:
            return
        self._last = now
        self.out.write(json.dumps({"file": f"{self.repo}/{name}", "done": self.finished + min(done, size),
                                   "total": self.total}) + "\n")
        self.out.flush()
        if complete:
            self.completed.add(key)
            self.finished += size


def run(args: argparse.Namespace) -> int:
    cache = args.cache_dir or cache_dir()
    plan = download_plan(args.model)
    progress = JsonProgress({repo: hub_files(repo, patterns) for repo, patterns in plan.items()}) \
        if args.json_progress else None
    for repo, patterns in plan.items():
        print(f"downloading {repo} ({', '.join(patterns)}) ...", flush=True)
        if progress is not None:
            progress.repo = repo
        folder = hub_snapshot(repo, patterns, cache=cache, on_bytes=progress.file_bytes if progress else None)
        _verify(folder)
        print(f"  ok: {folder}", flush=True)
    return 0
