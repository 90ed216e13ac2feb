"""The record a set-up leaves inside the environment it made: which model it installed.

Both set-ups write it, in one format (schema ``cupid.setup/1``, at least ``model``, ``weights`` and
``python``), as ``cupid-setup.json`` at the environment's root (``sys.prefix`` of its Python):
``install/setup.sh`` through `write_record` (``.venv``; offline the tiny model in ``weights/tiny``),
the add-on's *Set Up Backend* through ``cupid_blender/setup/state.py`` (``<its folder>/env``; the
same fields as its own ``setup.json``). The CLI (reconstruct, serve, batch) takes its model from
there unless ``--model`` names one, so that after an offline set-up it runs the tiny model the set-up
made, as the add-on does, instead of asking Hugging Face for the official one.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import config

RECORD_NAME = "cupid-setup.json"
RECORD_SCHEMA = "cupid.setup/1"


def record_path(prefix: str | os.PathLike | None = None) -> Path:
    """Where the record of the environment at `prefix` (default: this Python's) lives."""
    return Path(prefix if prefix is not None else sys.prefix) / RECORD_NAME


def read_record(prefix: str | os.PathLike | None = None) -> dict | None:
    """The record of a finished set-up of this environment, or None (none, unreadable, another schema)."""
    try:
        data = json.loads(record_path(prefix).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA else None


def recorded_model(prefix: str | os.PathLike | None = None) -> str | None:
    """The model (a Hugging Face id or a local directory) the set-up of this environment installed."""
    model = (read_record(prefix) or {}).get("model")
    return model if isinstance(model, str) and model.strip() else None


def choose_model(asked: str | None, prefix: str | os.PathLike | None = None) -> tuple[str, str]:
    """(model, why): `--model` when given, else the set-up's model, else the official weights."""
    if asked:
        return asked, "--model"
    model = recorded_model(prefix)
    if model is not None:
        return model, f"set up in {record_path(prefix)}; --model picks another"
    return config.CUPID_MODEL_ID, "the official weights; --model picks another"


def write_record(model: str, weights: str, prefix: str | os.PathLike | None = None, **fields: object) -> dict:
    """Write the record atomically (install/setup.sh calls this once its model is in place)."""
    path = record_path(prefix)
    rec = {"schema": RECORD_SCHEMA, "python": sys.executable, "model": model, "weights": weights, **fields,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return rec


def main(argv: list[str] | None = None) -> int:
    """``python -m cupid.setup_record MODEL WEIGHTS``: record this environment's set-up (install/setup.sh)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m cupid.setup_record MODEL WEIGHTS", file=sys.stderr)
        return 2
    print(f"recorded the model {args[0]} in {record_path()}")
    write_record(args[0], args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
