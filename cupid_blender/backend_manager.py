"""Start, watch and stop the local `cupid serve` process, or hand out a client for a remote one.

No bpy here: the operator reads the preferences on the main thread into a :class:`BackendConfig`
and the worker thread calls :meth:`BackendManager.client`, which may start the process and wait
for its token file (``{"url", "token"}``, written once the service listens). A process that
died is started again on the next request; it is stopped on unregister and at interpreter exit,
and its temporary directory (token file, log; readable by this user only, on Windows too) goes with
it. On Windows the process runs without a console window and is stopped without POSIX signals
(``setup.system``: ``hidden_process_options``, ``stop_process``, ``make_owner_only``).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .setup.system import Platform, child_environment, hidden_process_options, make_owner_only, stop_process


STOPPING_S = 20.0   # how long a backend that stopped answering is given to exit
FOLDER_PREFIX = "cupid-backend-"
STALE_S = 3600.0    # a backend folder without a token file, untouched this long, belongs to no running backend


def sweep_stale_folders(root: Optional[str] = None, now: Optional[float] = None, stale_s: float = STALE_S) -> list:
    """Remove the folders (a log) that backends of killed or crashed Blender sessions left behind.

    A backend started with `--watch-stdin` shuts down by itself when its Blender is gone and removes its
    token file, but the folder Blender made for it (and its log) stays. A folder with no token file whose
    last change is `stale_s` old belongs to no running backend (one starting writes its token within the
    start timeout); a folder still holding a token file is never touched. Returns the folders removed."""
    root = root or tempfile.gettempdir()
    now = time.time() if now is None else now
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(FOLDER_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        try:
            if (not os.path.isdir(path) or os.path.islink(path) or os.path.exists(os.path.join(path, "token.json"))
                    or now - os.stat(path).st_mtime < stale_s):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


class BackendStartError(Exception):
    """The local backend could not be started; the message is meant for the user."""


@dataclass(frozen=True)
class BackendConfig:
    kind: str = "LOCAL"          # LOCAL or REMOTE
    python: str = "python3"
    model: str = ""
    device: str = "auto"
    dtype: str = "auto"          # the networks' precision: auto, float32, bfloat16 or float16
    weights_dir: str = ""
    url: str = ""
    token: str = ""


def _client_module() -> Any:
    try:
        from . import client
    except ImportError as exc:
        raise BackendStartError(f"the CUPID client module is missing from this extension ({exc})") from exc
    return client


def resolve_python(python: str) -> str:
    """Absolute path of the configured interpreter (a path, or a bare command name looked up on PATH:
    ``python3``, ``python.exe``), or a clear error naming where it was looked for."""
    python = os.path.expanduser(python.strip()) if python else ""
    bare = bool(python) and not os.path.dirname(python)   # "C:/env/Scripts/python.exe" and "C:\\..." are paths
    found = shutil.which(python) if bare else (python if python and os.path.isfile(python) else None)
    if not found or not os.access(found, os.X_OK):
        raise BackendStartError(f"CUPID backend environment not found at {python or '(none set)'}: press Set Up "
                                f"Backend in the CUPID panel (or, from a checkout, run install/setup.sh), or set the "
                                f"backend Python in the add-on preferences")
    return found


class BackendManager:
    """One local backend process per Blender session (thread-safe)."""

    def __init__(self, platform: Optional[Platform] = None) -> None:
        self.platform = platform or Platform.current()
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._config: Optional[BackendConfig] = None
        self._tmpdir: Optional[str] = None
        self._client: Any = None
        self._log_path: Optional[str] = None
        self.restarts = 0
        self._stopped = False  # stopped on purpose (not a crash)

    # -- state -------------------------------------------------------------------------------
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_up(self, config: BackendConfig) -> bool:
        """Whether a job with `config` is served at once: a remote service, or the local backend
        already running with these settings (else it is started first)."""
        return config.kind == "REMOTE" or (self.running() and self._config == config and self._client is not None)

    def status_text(self) -> str:
        if self.running():
            url = getattr(self._client, "url", "") if self._client is not None else ""
            return f"running (pid {self._proc.pid}) {url}".strip()
        if self._proc is not None:
            return f"stopped (exit code {self._proc.returncode})"
        return "not started"

    def log_tail(self, lines: int = 15) -> str:
        if not self._log_path or not os.path.isfile(self._log_path):
            return ""
        with open(self._log_path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip()

    # -- control -----------------------------------------------------------------------------
    def client(self, config: BackendConfig, timeout: float = 600.0,
               should_cancel: Optional[Callable[[], bool]] = None) -> Any:
        """A client for the configured backend, starting (or restarting) the local process."""
        mod = _client_module()
        if config.kind == "REMOTE":
            if not config.url:
                raise BackendStartError("no backend URL set in the CUPID add-on preferences")
            return mod.CupidClient(config.url, config.token)
        with self._lock:
            if self.running() and self._config == config and self._client is not None:
                return self._client
            if self._proc is not None:
                if self._proc.poll() is not None and not self._stopped:
                    self.restarts += 1  # it crashed: start it again
                self._stop_locked()
            return self._start_locked(config, timeout, should_cancel)

    def start(self, config: BackendConfig, timeout: float = 600.0) -> Any:
        return self.client(config, timeout)

    def _start_locked(self, config: BackendConfig, timeout: float,
                      should_cancel: Optional[Callable[[], bool]]) -> Any:
        mod = _client_module()
        python = resolve_python(config.python)
        self._stopped = False
        sweep_stale_folders()   # what backends of killed Blender sessions left
        self._tmpdir = tempfile.mkdtemp(prefix=FOLDER_PREFIX)   # 0700 on POSIX
        try:
            make_owner_only(self._tmpdir, self.platform)   # Windows: this user alone (the token lives here)
        except OSError as exc:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            raise BackendStartError(f"cannot make a private folder for the backend's token: {exc}") from exc
        token_file = os.path.join(self._tmpdir, "token.json")
        self._log_path = os.path.join(self._tmpdir, "backend.log")
        cmd = [python, "-m", "cupid", "serve", "--port", "0", "--token-file", token_file, "--watch-stdin",
               "--device", config.device or "auto", "--dtype", config.dtype or "auto"]
        if config.model:
            cmd += ["--model", config.model]
        env = child_environment(os.environ)   # Blender's own python settings must not leak into the venv
        if config.weights_dir:
            env["CUPID_WEIGHTS_DIR"] = config.weights_dir
        log = open(self._log_path, "wb")
        try:   # no console window on Windows
            # its stdin is a pipe only this process holds: when Blender is gone (even killed), the backend
            # reads its end and shuts down by itself (`--watch-stdin`), temp folder and all
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, **hidden_process_options(self.platform))
        except OSError as exc:
            raise BackendStartError(f"cannot start the CUPID backend with {python}: {exc}") from exc
        finally:
            log.close()
        self._config = config
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                raise BackendStartError(f"the CUPID backend exited (code {self._proc.returncode}) while starting"
                                        + (f":\n{tail}" if tail else ""))
            if should_cancel is not None and should_cancel():
                self._stop_locked()
                raise BackendStartError("cancelled while the backend was starting")
            if os.path.isfile(token_file):
                try:
                    with open(token_file, encoding="utf-8") as fh:
                        info = json.load(fh)
                    if info.get("url") and info.get("token"):
                        break
                except (OSError, ValueError):
                    pass  # being written
            time.sleep(0.1)
        else:
            self._stop_locked()
            raise BackendStartError(f"the CUPID backend did not come up within {timeout:.0f} s")
        client = mod.CupidClient(info["url"], info["token"])   # explained only once it answered (below)
        while True:
            try:
                client.health()
                break
            except mod.BackendUnavailable:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self._stop_locked()
                    raise BackendStartError("the CUPID backend started but does not answer /v1/health")
                time.sleep(0.2)
        client.explain_unavailable = self._explainer(self._proc)
        self._client = client
        return client

    def _explainer(self, proc: subprocess.Popen) -> Callable[[], Optional[str]]:
        """What a client of `proc` says when nothing answers any more: that the backend stopped, and
        that running the job again starts it anew (the job itself is lost with the process). A
        backend told to stop (SIGTERM) closes its port first and exits a few seconds later: that is
        waited for (up to STOPPING_S), so the report is the right one and the next job starts a new
        process instead of meeting the dying one."""
        def explain() -> Optional[str]:
            try:
                code = proc.wait(timeout=STOPPING_S)
            except subprocess.TimeoutExpired:
                return None   # still running: something else is in the way (the generic report)
            stopped = "was stopped" if self._stopped and self._proc is proc else "stopped"
            return f"the local CUPID backend {stopped} while working (exit code {code}); run it again and it restarts"
        return explain

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        proc, self._proc, self._client = self._proc, None, None
        self._stopped = True
        if proc is not None:
            _close_stdin(proc, self.platform)   # the backend's own clean shutdown (`--watch-stdin`)
            stop_process(proc, self.platform)   # SIGTERM on POSIX; TerminateProcess on Windows
        if proc is not None:
            self._proc = proc  # keep the exit code for the status line
            if proc.poll() is None:
                self._proc = None
        if self._tmpdir:  # its token file and log go with it (a crash's log tail was read already)
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir, self._log_path = None, None


def _close_stdin(proc: subprocess.Popen, platform: Platform, grace: float = 5.0) -> None:
    """Close the pipe the backend watches, so that it shuts down by itself and removes its temporary
    files; on Windows (where terminating skips that clean-up) give it `grace` seconds to do so."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    if platform.windows and proc.poll() is None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


MANAGER = BackendManager()
atexit.register(MANAGER.stop)
