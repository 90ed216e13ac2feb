"""The add-on's backend manager against a real `cupid serve` process (tiny model): start, reuse,
restart after a crash, stop; and the clear errors an artist sees when it cannot start."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("bpy", reason="the extension package imports bpy")

from cupid_blender.backend_manager import BackendConfig, BackendManager, BackendStartError  # noqa: E402
from cupid_blender.client import BackendUnavailable  # noqa: E402

from cupid.models.dtype import dtype_name, resolve_dtype  # noqa: E402

PYTHON = sys.executable  # the backend environment (the venv running the tests)


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    return tiny_model


@pytest.fixture()
def manager():
    m = BackendManager()
    yield m
    m.stop()


def _config(model: Path | str, **kw) -> BackendConfig:
    return BackendConfig(python=PYTHON, model=str(model), device="cpu", **kw)


def test_start_reuse_restart_after_crash_and_stop(manager, tiny):
    cfg = _config(tiny)
    client = manager.client(cfg, timeout=120)
    health = client.health()
    assert health["model_error"] is None
    assert health["dtype"] == dtype_name(resolve_dtype("auto", "cpu"))   # "auto" goes to the backend to decide
    pid = manager._proc.pid
    assert manager.running() and f"pid {pid}" in manager.status_text()
    assert manager.client(cfg) is client  # same config: the running backend is reused

    first_dir = Path(manager._tmpdir)
    assert (first_dir / "token.json").is_file()
    os.kill(pid, signal.SIGKILL)  # the backend crashes (out of memory, a driver fault, ...)
    manager._proc.wait(timeout=10)
    assert not manager.running()
    # a job still talking to it is told what happened and what to do
    with pytest.raises(BackendUnavailable, match=r"stopped while working \(exit code -9\); run it again"):
        client.status("0123456789abcdef")
    again = manager.client(cfg, timeout=120)
    assert "version" in again.health()
    assert manager._proc.pid != pid and manager.restarts == 1
    assert not first_dir.exists()  # the crashed run's token file and log went with its directory

    proc, second_dir = manager._proc, Path(manager._tmpdir)
    assert "--watch-stdin" in proc.args    # it shuts down by itself when Blender is gone (test_serve_orphan.py)
    manager.stop()
    assert proc.stdin.closed and proc.poll() is not None and not manager.running()
    assert not second_dir.exists()
    assert manager.status_text().startswith("stopped")
    manager.client(cfg, timeout=120)  # a stop on purpose is not counted as a crash
    assert manager.restarts == 1


def test_a_missing_python_is_a_clear_error(manager, tmp_path):
    with pytest.raises(BackendStartError, match="CUPID backend environment not found at .*nowhere.*install/setup.sh"):
        manager.client(BackendConfig(python=str(tmp_path / "nowhere" / "python")))


def test_a_backend_that_dies_while_starting_reports_its_log(manager, tiny):
    t0 = time.monotonic()
    with pytest.raises(BackendStartError, match=r"exited \(code 2\) while starting") as ei:
        manager.client(BackendConfig(python=PYTHON, model=str(tiny), device="tpu"), timeout=120)
    assert "unknown device 'tpu'" in str(ei.value)  # the backend's own message reaches the artist
    assert time.monotonic() - t0 < 60


def test_the_precision_preference_reaches_the_backend(manager, tiny):
    client = manager.client(_config(tiny, dtype="bfloat16"), timeout=120)
    assert client.health()["dtype"] == "bfloat16"
    assert "--dtype" in manager._proc.args and "bfloat16" in manager._proc.args
    with pytest.raises(BackendStartError, match=r"exited \(code 2\) while starting") as ei:
        manager.client(_config(tiny, dtype="half"), timeout=120)
    assert "--dtype" in str(ei.value) and "invalid choice" in str(ei.value)


def test_cancel_while_starting(manager, tiny):
    with pytest.raises(BackendStartError, match="cancelled while the backend was starting"):
        manager.client(_config(tiny), timeout=120, should_cancel=lambda: True)
    assert not manager.running()


def test_remote_needs_a_url(manager):
    with pytest.raises(BackendStartError, match="no backend URL"):
        manager.client(BackendConfig(kind="REMOTE", url=""))


def test_folders_left_by_killed_sessions_are_swept_and_live_ones_kept(tmp_path):
    """A killed Blender's backend stops by itself and removes its token file; the folder holding its log is
    swept on a later start once it is an hour old. A folder with a token file (a running backend), a fresh
    one (a backend starting now) and anything not ours stay."""
    from cupid_blender.backend_manager import STALE_S, sweep_stale_folders

    now = time.time()
    folders = {}
    for name, token, age in [("cupid-backend-dead", False, STALE_S + 60), ("cupid-backend-running", True, 10 * STALE_S),
                             ("cupid-backend-starting", False, 5.0), ("other-dead", False, 10 * STALE_S)]:
        path = tmp_path / name
        path.mkdir()
        (path / "backend.log").write_text("log")
        if token:
            (path / "token.json").write_text("{}")
        os.utime(path, (now - age, now - age))
        folders[name] = path
    removed = sweep_stale_folders(str(tmp_path), now=now)
    assert removed == [str(folders["cupid-backend-dead"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cupid-backend-running", "cupid-backend-starting",
                                                          "other-dead"]
    assert sweep_stale_folders(str(tmp_path / "missing"), now=now) == []
