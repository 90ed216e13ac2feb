"""The set-up process: builds the backend step by step and reports JSON lines on stdout.

Started by :mod:`.process` with Blender's Python (never inside Blender's own process, so Blender
stays responsive and a cancel can stop the whole process tree). Steps (``state.STEPS``):

1. environment: a virtual environment from Blender's own Python when it can make one, else from a
   system Python >= 3.10 (PATH, or the ``py`` launcher on Windows);
2. torch: the PyTorch build the operator chose (:mod:`.torch_build`), with the environment's pip;
3. cupid: the ``cupid`` wheel bundled in the extension, with its dependencies;
4. weights: ``cupid download`` (bytes done / total and the file on the progress bar); offline, the
   tiny model, with the message ``install/setup.sh`` gives;
5. check: the new environment's ``cupid serve`` started, ``/v1/health`` asked, stopped.

A step done for the same inputs is skipped (``setup-state.json``), so a failed or cancelled set-up
resumes at the step that did not finish; only after the check is the record ``setup.json`` written.
Every line of every program goes to ``setup.log``; a failure ends in one line saying why.

Events (one JSON object a line): ``step`` {step, index, count, label, skipped}, ``progress``
{step, fraction (of the whole set-up), message}, ``info`` {message}, ``done`` {record}, ``error``
{step, message}.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence, TextIO

from .output import DISK_FULL, PipProgress, explain_failure, free_space, gb
from .plan import SetupRequest
from .state import STEP_LABELS, STEPS, BackendLayout, SetupState, forget_record, write_record
from .system import Platform, child_environment, hidden_process_options, python_version, system_python_candidates

MIN_PYTHON = (3, 10)
# The newest Python the backend's libraries install on: it pins numpy<2, and numpy 1.x publishes no builds
# for Python 3.13 (Blender 5.1's), so there a system Python 3.10-3.12 makes the environment.
MAX_PYTHON = (3, 12)
# Where each step's share of the progress bar ends (the downloads take the time).
STEP_END = {"environment": 0.05, "torch": 0.40, "cupid": 0.70, "weights": 0.95, "check": 1.0}
TINY_MESSAGE = ("The official weights could not be downloaded (see the message above).",
                "Using a tiny random-weight model instead: it runs the whole pipeline, but its shapes are noise.",
                "Run 'cupid download' again when you are online.")
class StepFailed(Exception):
    """A step failed; the message is the one line the panel shows."""


class Reporter:
    """Writes the events to `out` (the operator reads them) and a readable line of each to the log."""

    def __init__(self, out: TextIO, log: TextIO) -> None:
        self.out, self.log = out, log
        self.step, self.fraction = "", 0.0

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")   # ASCII: any console code page
        self.out.flush()

    def line(self, text: str) -> None:
        self.log.write(text.rstrip("\n") + "\n")
        self.log.flush()

    def info(self, message: str) -> None:
        self.line(f"-- {message}")
        self.emit("info", message=message)

    def progress(self, within: float, message: str) -> None:
        """`within`: how far the current step is (0..1)."""
        start = STEP_END[STEPS[STEPS.index(self.step) - 1]] if STEPS.index(self.step) else 0.0
        frac = start + (STEP_END[self.step] - start) * min(max(within, 0.0), 1.0)
        self.fraction = max(self.fraction, frac)
        self.emit("progress", step=self.step, fraction=round(self.fraction, 4), message=message)


class Setup:
    """One run of the set-up for a request."""

    def __init__(self, request: SetupRequest, reporter: Reporter, plat: Optional[Platform] = None,
                 environ: Optional[dict] = None, which: Callable[[str], Optional[str]] = shutil.which) -> None:
        self.req, self.rep = request, reporter
        self.plat = plat or Platform.current()
        self.layout = BackendLayout(request.backend_dir, self.plat)
        self.env = child_environment(environ if environ is not None else os.environ)
        if request.weights_dir:
            self.env["CUPID_WEIGHTS_DIR"] = request.weights_dir
        self.which = which
        self.state = SetupState(self.layout.state)

    # -- running programs -----------------------------------------------------------------------
    def run(self, cmd: Sequence[str], on_line: Callable[[str], None] = lambda _: None,
            env: Optional[dict] = None) -> tuple[int, list[str]]:
        """Run a program, every output line into the log and `on_line`; (exit code, its last lines)."""
        self.rep.line("$ " + " ".join(f'"{c}"' if " " in c else c for c in cmd))
        tail: list[str] = []
        try:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env or self.env,
                                    **hidden_process_options(self.plat))
        except OSError as exc:
            return 127, [f"cannot start {cmd[0]}: {exc}"]
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            for part in line.split("\r"):   # progress bars redraw with carriage returns
                if part.strip():
                    self.rep.line(part)
                    tail = (tail + [part])[-60:]
                    on_line(part)
        return proc.wait(), tail

    def pip_install(self, args: Sequence[str], what: str) -> None:
        # --no-compile: pip would compile every module of every package (torch's thousands) to bytecode,
        # more than half the install's time here; Python compiles the ones the backend imports at its
        # first start instead (the check step's), once.
        cmd = [self.layout.python, "-m", "pip", "install", "--prefer-binary", "--no-compile", *self._pip_progress(),
               *args]
        code, tail = self.run(cmd, PipProgress(self.rep.progress, what))
        if code != 0:
            raise StepFailed(explain_failure(f"Installing {what}", tail, self.layout.root, free_space(self.layout.root)))

    def _pip_progress(self) -> list[str]:
        """Byte counts from pip 24.1 on (``--progress-bar raw``); no bar drawing before."""
        code, out = self.run([self.layout.python, "-m", "pip", "--version"])
        m = re.search(r"pip (\d+)\.(\d+)", " ".join(out))
        return ["--progress-bar", "raw" if m and (int(m.group(1)), int(m.group(2))) >= (24, 1) else "off"]

    # -- the steps ----------------------------------------------------------------------------
    def step_environment(self) -> dict:
        venv, tried = self.layout.venv, []
        candidates = [("Blender's own Python", list(c)) for c in self.req.pythons]
        candidates += [("a system Python", c) for c in system_python_candidates(self.plat, self.which)]
        for kind, cmd in candidates:
            version = python_version(cmd, plat=self.plat)
            if version is None or not MIN_PYTHON <= version <= MAX_PYTHON:
                why = "cannot make environments" if version is None else \
                    f"Python {version[0]}.{version[1]} is too old" if version < MIN_PYTHON else \
                    f"Python {version[0]}.{version[1]} is too new for numpy 1.x, which the backend needs"
                tried.append(f"{kind} {' '.join(cmd)}: {why}")
                continue
            shutil.rmtree(venv, ignore_errors=True)
            self.rep.progress(0.3, f"Creating the environment with {kind} {version[0]}.{version[1]}")
            code, tail = self.run([*cmd, "-m", "venv", venv])
            if code == 0 and os.path.isfile(self.layout.python):
                ok, _ = self.run([self.layout.python, "-m", "pip", "--version"])
                if ok == 0:
                    label = f"{kind} {version[0]}.{version[1]} ({cmd[-1] if len(cmd) == 1 else ' '.join(cmd)})"
                    self.rep.info(f"Backend Python: {label}")
                    return {"base": label}
            if DISK_FULL.search("\n".join(tail)):
                raise StepFailed(explain_failure("Creating the environment", tail, self.layout.root,
                                                 free_space(self.layout.root)))
            tried.append(f"{kind} {' '.join(cmd)}: venv failed ({(tail or ['no output'])[-1][:120]})")
            shutil.rmtree(venv, ignore_errors=True)
        raise StepFailed("no Python here can create the backend's environment (" + "; ".join(tried) + "). "
                         "Install Python 3.12 from python.org (on Windows tick 'Add python.exe to PATH'), then press "
                         "Set Up Backend again")

    def step_torch(self) -> dict:
        t = self.req.torch
        self.rep.info(f"PyTorch: {t.label}" + (f" ({t.reason})" if t.reason else ""))
        self.pip_install(t.pip_args(), t.label)
        return {}

    def step_cupid(self) -> dict:
        if not os.path.isfile(self.req.wheel):
            raise StepFailed(f"the CUPID backend package is missing from the extension ({self.req.wheel}): "
                             f"install the add-on's zip again")
        self.pip_install([self.req.wheel], "the CUPID backend")
        code, out = self.run([self.layout.python, "-m", "cupid", "--version"])
        if code != 0:
            raise StepFailed(explain_failure("Checking the installed backend", out, self.layout.root))
        return {"version": (out or [""])[-1].replace("cupid", "").strip()}

    def step_weights(self) -> dict:
        env = dict(self.env, HF_HUB_ETAG_TIMEOUT="10", HF_HUB_DOWNLOAD_TIMEOUT="20")
        self.rep.progress(0.0, "Downloading the weights (about 5 GB)")

        def on_line(line: str) -> None:
            try:
                ev = json.loads(line)
            except ValueError:
                return
            if isinstance(ev, dict) and ev.get("total"):
                self.rep.progress(ev["done"] / ev["total"], f"Downloading {ev.get('file', 'the weights')}: "
                                                            f"{gb(ev['done'])} of {gb(ev['total'])}")
        code, tail = self.run([self.layout.python, "-m", "cupid", "download", "--json-progress"], on_line, env)
        if code == 0:
            return {"model": "hbb1/Cupid", "weights": "official"}
        if DISK_FULL.search("\n".join(tail)):
            raise StepFailed(explain_failure("Downloading the weights", tail, self.layout.root,
                                             free_space(self.layout.root)))
        reason = [ln for ln in tail if "error" in ln.lower()]
        if reason:
            self.rep.info(reason[-1].strip()[:300])   # "the message above"
        for line in TINY_MESSAGE:
            self.rep.info(line)
        tiny = {"model": self.layout.tiny_model, "weights": "tiny"}
        if os.path.isfile(os.path.join(self.layout.tiny_model, "pipeline.json")):
            return tiny   # made by an earlier set-up (it appears whole or not at all: see below)
        partial = self.layout.tiny_model + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        code, tail = self.run([self.layout.python, "-m", "cupid", "make-tiny-model", partial])
        if code != 0:
            raise StepFailed(explain_failure("Making the tiny model", tail, self.layout.root,
                                             free_space(self.layout.root)))
        shutil.rmtree(self.layout.tiny_model, ignore_errors=True)
        os.replace(partial, self.layout.tiny_model)
        return tiny

    def step_check(self) -> dict:
        from ..backend_manager import BackendConfig, BackendManager, BackendStartError

        model = self.state.result("weights").get("model", "")
        manager = BackendManager()
        self.rep.progress(0.2, "Starting the new backend (cupid serve)")
        try:
            health = manager.client(BackendConfig(python=self.layout.python, model=model,
                                                  weights_dir=self.req.weights_dir), timeout=300).health()
        except BackendStartError as exc:
            raise StepFailed(f"the new backend does not start: {str(exc).splitlines()[0]} (details in the set-up log)")
        finally:
            tail = manager.log_tail(40)
            manager.stop()
        if tail:
            self.rep.line(tail)
        self.rep.progress(1.0, f"The backend answers (device: {health.get('device')})")
        return {"device": str(health.get("device") or ""), "version": str(health.get("version") or "")}

    # -- the whole set-up ---------------------------------------------------------------------
    def inputs(self, step: str) -> dict:
        if step == "environment":
            return {"venv": self.layout.venv}
        if step == "torch":
            return {"spec": self.req.torch.spec, "index_url": self.req.torch.index_url}
        if step == "cupid":
            size = os.path.getsize(self.req.wheel) if os.path.isfile(self.req.wheel) else 0
            return {"wheel": os.path.basename(self.req.wheel), "size": size}
        if step == "weights":
            return {"weights_dir": self.req.weights_dir}
        return {"python": self.layout.python, "model": self.state.result("weights").get("model", "")}

    def redo(self, step: str) -> bool:
        """A done step that runs again all the same: the environment when its Python is gone, the weights
        while only the tiny model is there (the official ones may be downloadable now)."""
        if step == "environment":
            return not os.path.isfile(self.layout.python)
        return step == "weights" and self.state.result("weights").get("weights") == "tiny"

    def run_all(self) -> dict:
        os.makedirs(self.layout.root, exist_ok=True)
        if self.req.repair:
            self.rep.info("Repair: the environment is made again from the start (downloaded weights are kept)")
            shutil.rmtree(self.layout.venv, ignore_errors=True)
            self.state.done.clear()
        forget_record(self.layout)
        ran = False
        for index, step in enumerate(STEPS):
            self.rep.step = step
            inputs = self.inputs(step)
            done = self.state.is_done(step, inputs)
            if done and not self.redo(step):
                self.rep.emit("step", step=step, index=index, count=len(STEPS), label=STEP_LABELS[step], skipped=True)
                self.rep.line(f"== {STEP_LABELS[step]}: done already")
                self.rep.progress(1.0, f"{STEP_LABELS[step]}: done already")
                continue
            previous = self.state.result(step) if done else None
            self.rep.emit("step", step=step, index=index, count=len(STEPS), label=STEP_LABELS[step], skipped=False)
            self.rep.line(f"== {STEP_LABELS[step]} ({time.strftime('%H:%M:%S')})")
            self.rep.progress(0.0, STEP_LABELS[step])
            self.state.start(step)
            result = getattr(self, f"step_{step}")()
            self.state.finish(step, inputs, result, previous)
            self.rep.progress(1.0, f"{STEP_LABELS[step]}: done")
            ran = ran or result != previous   # a retry with the same outcome (still offline) changes nothing
        record = write_record(self.layout, python=self.layout.python, model=self.state.result("weights")["model"],
                              weights=self.state.result("weights")["weights"], torch=self.req.torch.to_dict(),
                              cupid=self.state.result("cupid").get("version", ""),
                              base_python=self.state.result("environment").get("base", ""),
                              device=self.state.result("check").get("device", ""), changed=ran)
        return record


def main(argv: Optional[list] = None) -> int:
    """``runner REQUEST_JSON``: run the set-up; exit 0 done, 1 failed."""
    argv = sys.argv[1:] if argv is None else argv
    request = SetupRequest.from_json(open(argv[0], encoding="utf-8").read())
    layout = BackendLayout(request.backend_dir, Platform.current())
    os.makedirs(layout.root, exist_ok=True)
    with open(layout.log, "a", encoding="utf-8") as log:
        rep = Reporter(sys.stdout, log)
        rep.line(f"\n===== CUPID backend set-up {time.strftime('%Y-%m-%d %H:%M:%S')} (Python {sys.version.split()[0]}, "
                 f"{sys.platform})")
        try:
            record = Setup(request, rep).run_all()
        except StepFailed as exc:
            rep.line(f"!! {exc}")
            rep.emit("error", step=rep.step, message=str(exc))
            return 1
        except Exception as exc:  # a bug: the traceback to the log, one line to the panel
            import traceback

            rep.line(traceback.format_exc())
            rep.emit("error", step=rep.step, message=f"the set-up stopped unexpectedly ({type(exc).__name__}: {exc}); "
                                                     f"details in the set-up log")
            return 1
        rep.line("== done: " + json.dumps(record, ensure_ascii=False))
        rep.emit("done", record=record)
        return 0

