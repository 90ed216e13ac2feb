"""`cupid serve --watch-stdin` (issue #24, orphans): a backend started by a program that then dies (Blender
killed with kill -9, a crash) shuts itself down and removes its temporary folder and token file, instead
of living on under PID 1 holding the model's memory. The parent here is a real process killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX")

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "cupid", "serve", "--port", "0", "--token-file", sys.argv[1],
                          "--model", sys.argv[2], "--device", "cpu", "--watch-stdin"], stdin=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:   # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_backend_exits_and_cleans_up_when_its_parent_is_killed(tiny_model, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    token = tmp_path / "private" / "token.json"
    env = {**os.environ, "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(token), str(tiny_model)], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _wait(token.is_file, 120), "the backend did not come up"
        assert json.loads(token.read_text())["url"].startswith("http://127.0.0.1:")
        assert [p.name for p in temp.iterdir() if p.name.startswith("cupid-serve-")]   # its folder while it runs
        os.kill(parent.pid, signal.SIGKILL)            # Blender dies without a word
        parent.wait(timeout=10)
        t0 = time.monotonic()
        assert _wait(lambda: _gone(child), 15), "the backend outlived the program that started it"
        assert time.monotonic() - t0 < 10
        assert not [p.name for p in temp.iterdir() if p.name.startswith("cupid-serve-")]   # folder removed
        assert not token.exists()                      # --port 0: its token file goes too
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_without_the_flag_nothing_watches_stdin():
    """The flag is opt-in: `cupid serve` run by hand (stdin a terminal, or closed by a service manager)
    keeps running."""
    from cupid.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "0"])
    assert args.watch_stdin is False
    assert build_parser().parse_args(["serve", "--watch-stdin"]).watch_stdin is True
