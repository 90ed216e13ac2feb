"""`cupid download`: fetch and verify the official weights with huggingface_hub (resumable)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config
from ..cli import CliError

NAME = "download"
HELP = "download the official CUPID weights (and the TRELLIS parts they need) from Hugging Face"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=config.CUPID_MODEL_ID, help="Hugging Face id of the CUPID release")
    p.add_argument("--cache-dir", default=None, help="where to keep the weights (default: the Hugging Face cache)")


def _verify(folder: Path, patterns: list[str]) -> None:
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


def run(args: argparse.Namespace) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CliError("huggingface_hub is not installed in this environment") from None
    repos = {args.model: config.DOWNLOAD_PATTERNS[config.CUPID_MODEL_ID],
             config.TRELLIS_MODEL_ID: config.DOWNLOAD_PATTERNS[config.TRELLIS_MODEL_ID]}
    for repo, patterns in repos.items():
        print(f"downloading {repo} ({', '.join(patterns)}) ...")
        try:
            folder = snapshot_download(repo_id=repo, allow_patterns=patterns, cache_dir=args.cache_dir)
        except Exception as exc:  # network errors come in many types; the user needs one sentence
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CliError(f"could not download {repo} from Hugging Face: {reason}. Check your network "
                           f"connection (or HF_ENDPOINT / proxy settings) and run 'cupid download' again; "
                           f"finished files are kept and the download resumes") from None
        _verify(Path(folder), patterns)
        print(f"  ok: {folder}")
    return 0
