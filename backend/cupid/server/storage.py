"""The server's private working directory: spooled job inputs and result zips, nothing else.

One directory per server start (`cupid-serve-*` in the temp dir, 0700 from `mkdtemp`) holds an
owner file with the server's pid whose modification time the server refreshes while it lives (a
heartbeat). A later start removes the directories of servers that are gone: by asking the OS about
the pid where that is safe (POSIX), else by the heartbeat's age (Windows, where `os.kill(pid, 0)`
would terminate the process). Every write that runs out of space becomes a `DiskFull` naming the
directory, and leaves no partial file behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import Cancelled
from .errors import DiskFull, is_disk_full

TMP_PREFIX = "cupid-serve-"
OWNER_FILE = "owner.pid"
STALE_AFTER_S = 600.0  # a heartbeat this old means its server is gone (when the pid cannot be asked)


def _alive(pid: int) -> bool:
    """POSIX only: does process `pid` exist?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(directory: Path, *, by_pid: bool = os.name == "posix", stale_after: float = STALE_AFTER_S,
               now: float | None = None) -> bool:
    """Has the server that made `directory` stopped? False when it is ours or not a server dir."""
    owner = directory / OWNER_FILE
    try:
        pid = int(owner.read_text())
        beat = owner.stat().st_mtime
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    if by_pid:
        return not _alive(pid)
    return (time.time() if now is None else now) - beat > stale_after


def sweep_stale_dirs(root: Path | None = None, *, by_pid: bool = os.name == "posix",
                     stale_after: float = STALE_AFTER_S) -> list[Path]:
    """Remove the working dirs of servers that died without cleaning up (SIGKILL, power loss)."""
    root = Path(tempfile.gettempdir()) if root is None else root
    removed = []
    for d in root.glob(TMP_PREFIX + "*"):
        if d.is_dir() and owner_gone(d, by_pid=by_pid, stale_after=stale_after):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class WorkDir:
    """This server's directory (swept stale ones first); `heartbeat()` keeps it from being swept."""

    def __init__(self, root: Path | None = None):
        sweep_stale_dirs(root)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
            (self.path / OWNER_FILE).write_text(str(os.getpid()))
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(root or tempfile.gettempdir()) from None
            raise

    def heartbeat(self) -> None:
        try:
            os.utime(self.path / OWNER_FILE)
        except OSError:
            pass

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def zip_dir(directory: Path, target: Path, should_cancel: Callable[[], bool] | None = None) -> Path:
    """Write every file under `directory` into the zip `target` (paths relative, '/'-separated).

    The zip is written as `target.part` and renamed when complete; on any failure the part file is
    removed (a full disk raises `DiskFull`). `should_cancel` is asked before each file and every 4 MB of
    a large one (raises `Cancelled`)."""
    partial = target.with_suffix(".part")

    def check() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("the job was cancelled")

    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for f in sorted(directory.rglob("*")):
                check()
                if f.is_file():
                    with open(f, "rb") as src, z.open(f.relative_to(directory).as_posix(), "w") as dst:
                        while chunk := src.read(4 << 20):
                            dst.write(chunk)
                            check()
            check()
        partial.replace(target)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(target.parent) from None
        raise
    return target
