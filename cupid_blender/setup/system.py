"""What differs between Windows, macOS and Linux for the processes and folders the add-on makes.

Every function takes the :class:`Platform` it decides for (and, where it runs a program, the
function that runs it), so each branch is exercised on any system by the tests with the platform
faked. Paths of the other system are built with ``ntpath`` / ``posixpath`` rather than ``os.path``
for the same reason.
"""
from __future__ import annotations

import ntpath
import os
import platform as _platform
import posixpath
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

CREATE_NO_WINDOW = 0x08000000          # subprocess.CREATE_NO_WINDOW (Windows only, spelled out here)
CREATE_NEW_PROCESS_GROUP = 0x00000200  # subprocess.CREATE_NEW_PROCESS_GROUP
MAX_PATH = 260                         # Windows' path limit while long paths are off
LONG_PATHS_KEY = r"SYSTEM\CurrentControlSet\Control\FileSystem"

Runner = Callable[..., Any]            # subprocess.run's signature


@dataclass(frozen=True)
class Platform:
    """``sys.platform`` and ``platform.machine()``: "win32" / "darwin" / "linux…", "AMD64" / "arm64" / …"""

    system: str
    machine: str

    @classmethod
    def current(cls) -> "Platform":
        return cls(sys.platform, _platform.machine())

    @property
    def windows(self) -> bool:
        return self.system == "win32"

    @property
    def mac(self) -> bool:
        return self.system == "darwin"

    @property
    def apple_silicon(self) -> bool:
        return self.mac and self.machine.lower() in ("arm64", "aarch64")

    @property
    def path(self) -> Any:
        """The path module of this platform (ntpath on Windows, posixpath elsewhere)."""
        return ntpath if self.windows else posixpath


def venv_python(venv: str, plat: Platform) -> str:
    """The interpreter of a virtual environment: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    if plat.windows:
        return ntpath.join(venv, "Scripts", "python.exe")
    return posixpath.join(venv, "bin", "python")


def hidden_process_options(plat: Platform, own_group: bool = False) -> dict:
    """Popen keyword arguments for a background process: no console window on Windows; with
    `own_group`, a process group of its own (so the whole tree can be stopped at once)."""
    if plat.windows:
        return {"creationflags": CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if own_group else 0)}
    return {"start_new_session": True} if own_group else {}


def child_environment(environ: Mapping[str, str]) -> dict:
    """The environment for the backend's Python: Blender's own Python settings must not leak into
    it, and its output is UTF-8 whatever the console code page (non-ASCII paths in messages)."""
    env = {k: v for k, v in environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP",
                                                        "PYTHONEXECUTABLE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}
    env.update(PYTHONUTF8="1", PYTHONIOENCODING="utf-8", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def stop_process(proc: Any, plat: Platform, timeout: float = 5.0) -> None:
    """Stop one process: SIGTERM on POSIX (the backend cleans up and exits), TerminateProcess on
    Windows (no POSIX signals there: ``Popen.terminate`` is TerminateProcess); killed if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def kill_tree(proc: Any, plat: Platform, run: Runner = subprocess.run,
              killpg: Optional[Callable[[int, int], None]] = None, timeout: float = 5.0) -> None:
    """Stop a process and everything it started (the set-up's pip and its builds). The process must
    have been started with ``hidden_process_options(plat, own_group=True)``. Windows: ``taskkill /T``;
    POSIX: SIGTERM to its process group, SIGKILL to what is left."""
    if proc.poll() is not None:
        return
    if plat.windows:
        run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True,
            creationflags=CREATE_NO_WINDOW)
    else:
        kill = killpg or os.killpg
        for sig, wait in ((signal.SIGTERM, timeout), (getattr(signal, "SIGKILL", signal.SIGTERM), timeout)):
            try:
                kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is not None:
                break
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def current_user_sid(run: Runner = subprocess.run) -> Optional[str]:
    """The Windows security id of this user (``whoami /user``), or None."""
    try:
        out = run(["whoami", "/user", "/fo", "csv", "/nh"], capture_output=True, text=True,
                  creationflags=CREATE_NO_WINDOW, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [f.strip().strip('"') for f in (out.stdout or "").strip().split(",")]
    return fields[-1] if getattr(out, "returncode", 1) == 0 and fields and fields[-1].startswith("S-") else None


def make_owner_only(path: str, plat: Platform, run: Runner = subprocess.run,
                    environ: Mapping[str, str] = os.environ) -> None:
    """Let only this user read `path` (a folder: what it holds too). POSIX: mode 0700 / 0600.
    Windows (where chmod only toggles read-only): the inherited permissions are replaced by full
    control for this user alone, with ``icacls``. Raises OSError when that fails."""
    if not plat.windows:
        os.chmod(path, 0o700 if os.path.isdir(path) else 0o600)
        return
    sid = current_user_sid(run)
    who = f"*{sid}" if sid else (f"{environ['USERDOMAIN']}\\{environ['USERNAME']}" if environ.get("USERDOMAIN")
                                 else environ.get("USERNAME", ""))
    if not who:
        raise OSError(f"cannot tell which Windows user to give {path} to")
    grant = f"{who}:(OI)(CI)F" if os.path.isdir(path) else f"{who}:F"
    out = run(["icacls", path, "/inheritance:r", "/grant:r", grant], capture_output=True, text=True,
              creationflags=CREATE_NO_WINDOW, timeout=60)
    if getattr(out, "returncode", 1) != 0:
        raise OSError(f"icacls could not make {path} private: {(out.stdout or '').strip() or out.stderr}")


def long_paths_enabled(plat: Platform, registry: Optional[Callable[[], int]] = None) -> bool:
    """Whether Windows accepts paths past 260 characters (LongPathsEnabled); always true elsewhere."""
    if not plat.windows:
        return True
    try:
        if registry is not None:
            return bool(registry())
        import winreg  # Windows only

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except (OSError, ImportError):
        return False


def system_python_candidates(plat: Platform, which: Callable[[str], Optional[str]]) -> list[list[str]]:
    """Commands that may start a system Python (newest first): the ``py`` launcher on Windows, then
    python3 / python on PATH (the Microsoft Store's python.exe stub is skipped: it only opens the Store)."""
    out: list[list[str]] = []
    if plat.windows:
        launcher = which("py")
        if launcher:
            out += [[launcher, f"-3.{minor}"] for minor in (12, 11, 10)]
    for name in ("python3", "python"):
        found = which(name)
        if found and "WindowsApps" not in found and [found] not in out:
            out.append([found])
    return out


def python_version(cmd: Sequence[str], run: Runner = subprocess.run, plat: Optional[Platform] = None) -> Optional[tuple]:
    """(major, minor) of a Python command that can make virtual environments, else None."""
    code = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    kwargs = {"creationflags": CREATE_NO_WINDOW} if (plat or Platform.current()).windows else {}
    try:
        out = run([*cmd, "-I", "-c", code], capture_output=True, text=True, timeout=60, **kwargs)
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        major, minor = (int(x) for x in out.stdout.strip().splitlines()[-1].split("."))
    except (ValueError, IndexError, AttributeError):
        return None
    return (major, minor) if out.returncode == 0 else None
