"""Where the set-up puts the backend, which of its steps are done, and the record of a finished one.

Everything lives in one folder, the extension's user folder ``backend/`` (Blender's
``extension_path_user(__package__, path="backend")``): the environment ``env/``, the offline tiny
model ``tiny-model/``, ``setup-state.json`` (the steps done, each with the inputs it was done for, so
a failed or cancelled set-up resumes at the step that did not finish), ``setup.log`` and
``setup.json``, the record of a working backend (its Python, the model it installed, the PyTorch
build, the device its health check reported). The record is written last, after the smoke test, and
removed before anything is changed, so a half-built environment is never taken for a working one.
The same record goes into the environment itself, ``env/cupid-setup.json``, where the backend's CLI
reads the model it should run (``cupid.setup_record``; ``install/setup.sh`` writes one there too).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from .system import Platform, venv_python

STEPS = ("environment", "torch", "cupid", "weights", "check")
STEP_LABELS = {
    "environment": "Creating the Python environment",
    "torch": "Installing PyTorch",
    "cupid": "Installing the CUPID backend and its libraries",
    "weights": "Downloading the weights",
    "check": "Checking the backend (start, health, stop)",
}
RECORD_SCHEMA = "cupid.setup/1"
ENV_RECORD_NAME = "cupid-setup.json"   # the backend's cupid.setup_record.RECORD_NAME, at the env's sys.prefix


@dataclass(frozen=True)
class BackendLayout:
    """The paths of one backend folder on one platform."""

    root: str
    plat: Platform

    def _join(self, *parts: str) -> str:
        return self.plat.path.join(self.root, *parts)

    @property
    def venv(self) -> str:
        return self._join("env")          # short: Windows paths inside torch are long already

    @property
    def python(self) -> str:
        return venv_python(self.venv, self.plat)

    @property
    def tiny_model(self) -> str:
        return self._join("tiny-model")

    @property
    def state(self) -> str:
        return self._join("setup-state.json")

    @property
    def record(self) -> str:
        return self._join("setup.json")

    @property
    def env_record(self) -> str:
        """The copy of the record inside the environment, which the backend's commands read."""
        return self.plat.path.join(self.venv, ENV_RECORD_NAME)

    @property
    def log(self) -> str:
        return self._join("setup.log")

    @property
    def request(self) -> str:
        return self._join("setup-request.json")


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically (a crash or kill leaves the old file or the new one, never half)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SetupState:
    """The steps done, kept in ``setup-state.json`` as ``{step: {"inputs": ..., "result": ...}}``. A
    step counts as done only for the inputs it was done with; a step whose result changes makes
    every later step run again."""

    def __init__(self, path: str) -> None:
        self.path = path
        data = read_json(path) or {}
        done = data.get("done")
        self.done: dict = done if isinstance(done, dict) else {}

    def is_done(self, step: str, inputs: dict) -> bool:
        entry = self.done.get(step)
        return isinstance(entry, dict) and entry.get("inputs") == inputs

    def result(self, step: str) -> dict:
        entry = self.done.get(step)
        return dict(entry.get("result") or {}) if isinstance(entry, dict) else {}

    def start(self, step: str) -> None:
        """`step` runs now: it is no longer done (the later ones stay until its result differs)."""
        self.done.pop(step, None)
        self._save()

    def finish(self, step: str, inputs: dict, result: Optional[dict] = None, previous: Optional[dict] = None) -> None:
        """`step` is done; when its result differs from `previous`, the later steps must run again."""
        if previous is None or (result or {}) != previous:
            for later in STEPS[STEPS.index(step) + 1:]:
                self.done.pop(later, None)
        self.done[step] = {"inputs": inputs, "result": result or {}}
        self._save()

    def completed(self) -> list[str]:
        return [s for s in STEPS if s in self.done]

    def _save(self) -> None:
        write_json(self.path, {"done": self.done, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def read_record(layout: BackendLayout) -> Optional[dict]:
    """The record of a finished set-up whose Python is still there, else None."""
    rec = read_json(layout.record)
    if not rec or rec.get("schema") != RECORD_SCHEMA or not isinstance(rec.get("python"), str):
        return None
    return rec if os.path.isfile(rec["python"]) else None


def write_record(layout: BackendLayout, **fields: Any) -> dict:
    """The record, in the backend folder (for the add-on) and in the environment (for its CLI)."""
    rec = {"schema": RECORD_SCHEMA, **fields, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(layout.env_record, rec)
    write_json(layout.record, rec)
    return rec


def forget_record(layout: BackendLayout) -> None:
    for path in (layout.record, layout.env_record):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
