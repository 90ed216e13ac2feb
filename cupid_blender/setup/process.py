"""Blender's side of the set-up process: start :mod:`.runner` in a Python process of its own, read
its JSON lines in a thread, hand the latest status and, once, the outcome to the UI thread, and
cancel it (the whole process tree: pip and whatever it started).

The runner is the add-on's own code, loaded in the new process under a private package name
(``cupid_addon``), so it never collides with the backend's package ``cupid`` and needs nothing
installed: only the Python that runs it (Blender's, or any 3.10+).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from .system import Platform, child_environment, hidden_process_options, kill_tree

PRIVATE_PACKAGE = "cupid_addon"
BOOT = (
    "import importlib.util, os, sys\n"
    "root = sys.argv[1]\n"
    f"spec = importlib.util.spec_from_file_location({PRIVATE_PACKAGE!r}, os.path.join(root, '__init__.py'),\n"
    "                                               submodule_search_locations=[root])\n"
    "pkg = importlib.util.module_from_spec(spec)\n"
    f"sys.modules[{PRIVATE_PACKAGE!r}] = pkg\n"
    "spec.loader.exec_module(pkg)\n"
    f"from {PRIVATE_PACKAGE}.setup.runner import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@dataclass
class SetupStatus:
    """The latest news: the step (its index of count), how far the whole set-up is, and a message."""

    step: str = ""
    index: int = 0
    count: int = 0
    label: str = "Starting the set-up"
    fraction: float = 0.0
    message: str = "Starting the set-up"
    notes: list = field(default_factory=list)     # the info lines (the Python chosen, the PyTorch build, ...)


@dataclass(frozen=True)
class SetupOutcome:
    state: str                   # done, failed or cancelled
    message: str
    record: Optional[dict] = None


CANCELLED = ("Set-up cancelled; the preferences are unchanged. Press Set Up Backend to continue where it "
             "stopped")


class SetupProcess:
    """One run of the set-up process."""

    def __init__(self, python: str, addon_dir: str, request_path: str, log_path: str,
                 plat: Optional[Platform] = None, environ: Optional[dict] = None) -> None:
        self.cmd = [python, "-I", "-c", BOOT, addon_dir, request_path]
        self.log_path = log_path
        self.plat = plat or Platform.current()
        self.env = child_environment(environ if environ is not None else os.environ)
        self._lock = threading.Lock()
        self._status = SetupStatus()
        self._outcome: Optional[SetupOutcome] = None
        self._delivered = False
        self._cancelled = False
        self.proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "SetupProcess":
        with open(self.log_path, "ab") as log:   # the runner's own crash (a traceback) lands in the log too
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         env=self.env, **hidden_process_options(self.plat, own_group=True))
        self._thread = threading.Thread(target=self._read, name="cupid-setup", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        done: Optional[dict] = None
        error: Optional[str] = None
        for raw in self.proc.stdout:
            try:
                ev = json.loads(raw.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            with self._lock:
                self._apply(ev)
            if ev.get("event") == "done":
                done = ev.get("record") or {}
            elif ev.get("event") == "error":
                error = str(ev.get("message") or "")
        code = self.proc.wait()
        with self._lock:
            if self._cancelled:
                self._outcome = SetupOutcome("cancelled", CANCELLED)
            elif done is not None and code == 0:
                self._outcome = SetupOutcome("done", "", done)
            else:
                self._outcome = SetupOutcome("failed", error or f"the set-up process ended unexpectedly (exit code "
                                                                f"{code}); details in the set-up log")

    def _apply(self, ev: dict) -> None:
        s = self._status
        kind = ev.get("event")
        if kind == "step":
            s.step, s.index, s.count, s.label = ev["step"], int(ev["index"]), int(ev["count"]), str(ev["label"])
        elif kind == "progress":
            s.fraction = max(s.fraction, float(ev.get("fraction") or 0.0))
            s.message = str(ev.get("message") or s.message)
        elif kind == "info":
            s.notes.append(str(ev.get("message") or ""))
            s.message = s.notes[-1]

    def poll(self) -> tuple[SetupStatus, Optional[SetupOutcome]]:
        """The latest status, and the outcome the first time it is asked for after the end."""
        with self._lock:
            status = SetupStatus(**{**self._status.__dict__, "notes": list(self._status.notes)})
            if self._outcome is not None and not self._delivered:
                self._delivered = True
                return status, self._outcome
            return status, None

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def cancel(self) -> None:
        """Stop the set-up and everything it started; what was done stays done (the next run resumes)."""
        with self._lock:
            if self._outcome is not None:
                return
            self._cancelled = True
        if self.proc is not None:
            kill_tree(self.proc, self.plat)

    def wait(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def write_request(path: str, request: Any) -> None:
    """The request the runner reads (``SetupRequest.to_json``), written before it starts."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(request.to_json())
