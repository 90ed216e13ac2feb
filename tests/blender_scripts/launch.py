"""The pytest side of the Blender driver scripts: the zip built as install/setup.sh builds it (with the
tiny model), a driver started in a clean headless Blender, and its result read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "install"))
import build_extension  # noqa: E402


def tiny_zip(tmp: Path, model: Path | None = None) -> tuple[Path, Path]:
    """(tiny model, extension zip recording it as the default model); the session's tiny model when
    given (conftest's `tiny_model`), else a new one."""
    if model is None:
        from cupid.tiny import make_tiny_model

        model = make_tiny_model(tmp / "tiny")
    return model, build_extension.build(tmp / "dist", model=str(model))


def ellipse(w: int, h: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """bool [h, w], top row first: the pixels whose centre lies inside the ellipse."""
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def start(driver: Path, cfg: dict, tmp: Path, python: str = sys.executable, user: Path | None = None,
          **env_extra: str | None) -> tuple[subprocess.Popen, Path]:
    """Start `python DRIVER CONFIG` (`python`: the Blender module's interpreter) with Blender's user
    resources in `user` (default `tmp`/blender_user) and the backend from the installed environment
    (no PYTHONPATH), its output in a file; (process, log path). An `env_extra` value None removes
    that variable."""
    (tmp / "config.json").write_text(json.dumps(cfg))
    user = user or tmp / "blender_user"
    user.mkdir(exist_ok=True)
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the backend runs from the installed environment, like an artist's
    for key, value in env_extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    log = tmp / "blender.log"
    with open(log, "wb") as fh:  # a file, not a pipe: Blender's own output must never block it
        proc = subprocess.Popen([python, "-u", str(driver), str(tmp / "config.json")],
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proc, log


def result(cfg: dict, proc: subprocess.Popen, log: Path) -> dict:
    """The driver's result once it ended cleanly (else the log's tail in the failure)."""
    tail = log.read_text(errors="replace")[-3000:]
    assert proc.returncode == 0 and Path(cfg["result"]).is_file(), f"Blender run failed ({proc.returncode}):\n{tail}"
    out = json.loads(Path(cfg["result"]).read_text())
    assert "crash" not in out, out.get("crash", "") + "\n" + tail
    return out


def run(driver: Path, cfg: dict, tmp: Path, timeout: float = 1200, python: str = sys.executable,
        user: Path | None = None, **env_extra: str | None) -> dict:
    """Start a driver, wait for it (killed past `timeout`) and return its result."""
    proc, log = start(driver, cfg, tmp, python, user, **env_extra)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return result(cfg, proc, log)
