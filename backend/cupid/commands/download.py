"""`cupid download`: fetch everything a run needs into the weights cache, resumably, and check it.

After it, `HF_HUB_OFFLINE=1 cupid reconstruct ...` runs with no network at all: the CUPID release, the
TRELLIS-image-large parts it uses, DINOv2 and the point-map model (see `config.DOWNLOAD_PATTERNS`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config
from ..errors import CliError
from ..hub import WEIGHTS_DIR_ENV, cache_dir, hub_snapshot

NAME = "download"
HELP = "download the official CUPID weights and every model a run needs from Hugging Face"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=config.CUPID_MODEL_ID, help="Hugging Face id of the CUPID release")
    p.add_argument("--cache-dir", default=None,
                   help=f"where to keep the weights (default: ${WEIGHTS_DIR_ENV}, else the Hugging Face cache); "
                        f"runs read the same place when {WEIGHTS_DIR_ENV} names it")


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


def run(args: argparse.Namespace) -> int:
    cache = args.cache_dir or cache_dir()
    for repo, patterns in download_plan(args.model).items():
        print(f"downloading {repo} ({', '.join(patterns)}) ...", flush=True)
        folder = hub_snapshot(repo, patterns, cache=cache)
        _verify(folder)
        print(f"  ok: {folder}")
    return 0
