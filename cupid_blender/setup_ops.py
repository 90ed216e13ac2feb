"""*Set Up Backend*, *Repair*, *Remove*, *Cancel Set-up* and *Open Set-up Log*: the bpy room around
:mod:`.setup` (which holds everything that runs without Blender).

The operator decides on the main thread what to install (Online Access, the PyTorch build, Windows'
path limit, the disk space it needs) and starts the set-up process; a timer (``bpy.app.timers``, so a
file load does not stop it) or, in background mode, a blocking loop that prints a line per step and
turns Ctrl-C into a cancel, takes its news into the window manager's properties the panel draws. The
preferences are changed only once the set-up has checked the new backend: a failure or a cancel
leaves them as they were.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .backend_manager import MANAGER
from .io.settings import downloaded_official, hub_caches
from .operators import _CtrlC
from .preferences import get_prefs
from .setup.plan import (SetupProblem, SetupRequest, by_disk, check_space, describe_space, existing_parent,
                         long_path_problem, refuse_location, space_needed)
from .setup.process import SetupOutcome, SetupProcess, write_request
from .setup.state import BackendLayout, SetupState
from .setup.system import Platform, long_paths_enabled
from .setup.torch_build import TorchChoiceError, choose_torch, detect_nvidia
from .setup_ui import backend_folder, layout_of

ADDON_DIR = os.path.dirname(os.path.abspath(__file__))
SETUP: dict = {"process": None, "layout": None}
ONLINE_ACCESS = ("CUPID's set-up downloads PyTorch, the backend's libraries and the weights (several GB), and "
                 "Online Access is off: allow it in Preferences > System > Network, then press Set Up Backend again")


def running() -> bool:
    proc = SETUP["process"]
    return proc is not None and not proc.finished


def bundled_wheel() -> Optional[str]:
    """The backend wheel inside this extension (install/build_extension.py puts it in ``bundled/``)."""
    found = sorted(glob.glob(os.path.join(ADDON_DIR, "bundled", "cupid-*.whl")))
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# deciding and starting
# ---------------------------------------------------------------------------------------------

def _forbidden_places() -> list[tuple[str, str]]:
    """Where a backend must never be made: Blender's installation, and the CUPID source checkout this
    add-on runs from (a developer's linked add-on: the folder holding .git and backend/pyproject.toml)."""
    places = [(os.path.dirname(bpy.app.binary_path) if bpy.app.binary_path else "", "Blender's installation"),
              (bpy.utils.resource_path("LOCAL"), "Blender's installation")]
    here = Path(os.path.realpath(ADDON_DIR))
    for parent in (here, *here.parents):
        if (parent / ".git").exists() and (parent / "backend" / "pyproject.toml").is_file():
            places.append((str(parent), "a source checkout"))
            break
    return places


def plan_setup(prefs: Any, repair: bool) -> tuple[SetupRequest, BackendLayout, list[str]]:
    """The request for the set-up process, its layout and the lines saying what it will do. Raises
    SetupProblem with the one line that says why it cannot start."""
    if not getattr(bpy.app, "online_access", True):
        raise SetupProblem(ONLINE_ACCESS)
    wheel = bundled_wheel()
    if wheel is None:
        raise SetupProblem("this copy of the CUPID extension has no backend package inside (bundled/cupid-*.whl): "
                           "install the extension's zip again")
    plat = Platform.current()
    layout = BackendLayout(backend_folder(prefs), plat)
    problem = refuse_location(layout.root, _forbidden_places(), plat) if prefs.backend_dir else None
    problem = problem or long_path_problem(layout, long_paths_enabled(plat))
    if problem:
        raise SetupProblem(problem)
    try:
        torch = choose_torch(prefs.torch_build, plat, detect_nvidia(plat, shutil.which), os.environ)
    except TorchChoiceError as exc:
        raise SetupProblem(str(exc)) from None
    weights = bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else ""
    done = [] if repair else SetupState(layout.state).completed()
    caches = hub_caches(os.environ, Path.home(), weights)
    items = space_needed(torch.kind, done, downloaded_official(caches) is not None)
    for where, wanted in by_disk(items, existing_parent(layout.root), existing_parent(str(caches[0]))):
        short = check_space(wanted, shutil.disk_usage(where).free, where)
        if short:
            raise SetupProblem(short)
    lines = [f"PyTorch: {torch.label}" + (f" ({torch.reason})" if torch.reason else ""),
             f"Backend folder: {layout.root}"]
    if items:
        lines.append(f"Disk space needed: about {sum(gb for _, gb in items):.1f} GB ({describe_space(items)})")
    request = SetupRequest(backend_dir=layout.root, wheel=wheel, torch=torch, pythons=[[sys.executable]],
                           weights_dir=weights, repair=repair)
    return request, layout, lines


def start_setup(prefs: Any, repair: bool) -> tuple[SetupProcess, list[str]]:
    request, layout, lines = plan_setup(prefs, repair)
    os.makedirs(layout.root, exist_ok=True)
    write_request(layout.request, request)
    proc = SetupProcess(sys.executable, ADDON_DIR, layout.request, layout.log).start()
    SETUP["process"], SETUP["layout"] = proc, layout
    return proc, lines


# ---------------------------------------------------------------------------------------------
# following it
# ---------------------------------------------------------------------------------------------

def _show(wm: Any, proc: SetupProcess) -> Optional[SetupOutcome]:
    status, outcome = proc.poll()
    wm.cupid_setup_running = outcome is None
    wm.cupid_setup_progress = status.fraction
    step = f"{status.index + 1}/{status.count} {status.label}" if status.count else status.label
    wm.cupid_setup_step = step
    wm.cupid_setup_message = status.message
    return outcome


def finish(context: Any, outcome: SetupOutcome) -> tuple[str, str]:
    """Point the preferences at the new backend (only when it was checked); (report level, message)."""
    wm = context.window_manager
    wm.cupid_setup_running = False
    SETUP["process"] = None
    if outcome.state != "done":
        wm.cupid_setup_error = outcome.message
        wm.cupid_setup_message = outcome.message
        return ("WARNING" if outcome.state == "cancelled" else "ERROR"), f"CUPID set-up: {outcome.message}"
    rec = outcome.record or {}
    prefs = get_prefs(context)
    if prefs is not None:
        if prefs.python_path != rec["python"]:
            MANAGER.stop()   # the next job starts the new environment's backend
        prefs.backend_kind, prefs.python_path, prefs.model = "LOCAL", rec["python"], rec["model"]
    wm.cupid_setup_error = ""
    wm.cupid_setup_progress = 1.0
    model = "the tiny test model (offline; press Set Up Backend again when online)" if rec.get("weights") == "tiny" \
        else rec["model"]
    verb = "ready" if rec.get("changed") else "already set up"
    message = f"CUPID backend {verb}: {(rec.get('torch') or {}).get('label', '')}, {model}, device {rec.get('device')}"
    wm.cupid_setup_message = message
    return "INFO", message


def _redraw_all() -> None:
    wm = bpy.context.window_manager
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _timer() -> Optional[float]:
    """The UI's poll of the running set-up (every 0.25 s until it ends)."""
    proc = SETUP["process"]
    if proc is None:
        return None
    context = bpy.context
    outcome = _show(context.window_manager, proc)
    if outcome is not None:
        level, message = finish(context, outcome)
        print(message, flush=True)
    _redraw_all()
    return None if outcome is not None else 0.25


def wait_here(context: Any, proc: SetupProcess) -> SetupOutcome:
    """Background mode: wait on this thread, printing the step and every 10 percent; Ctrl-C cancels."""
    wm, last = context.window_manager, None
    with _CtrlC(proc, "the set-up") as ctrl_c:
        while True:
            outcome = _show(wm, proc)
            line = (wm.cupid_setup_step, int(10 * wm.cupid_setup_progress))
            if line != last:
                print(f"CUPID set-up: {wm.cupid_setup_step} {100 * wm.cupid_setup_progress:.0f}%: "
                      f"{wm.cupid_setup_message}", flush=True)
                last = line
            if outcome is None and ctrl_c.abandoned:
                proc.cancel()
                proc.wait(30)
                outcome = proc.poll()[1] or SetupOutcome("cancelled", "set-up cancelled")
            if outcome is not None:
                return outcome
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------------------------

class CUPID_OT_setup_backend(bpy.types.Operator):
    """Install the CUPID backend on this computer: a Python environment in Blender's user folder with \
PyTorch, the backend and the weights (several GB, 10 minutes or more); resumes where a failed or cancelled \
set-up stopped, and does nothing on a working backend"""

    bl_idname = "cupid.setup_backend"
    bl_label = "Set Up Backend"

    repair: BoolProperty(name="Repair", default=False, options={"SKIP_SAVE"},
                         description="Make the environment again from the start (downloaded weights are kept)")

    @classmethod
    def poll(cls, context: Any) -> bool:
        return not running()

    def execute(self, context: Any) -> set:
        wm = context.window_manager
        prefs = get_prefs(context)
        if prefs is None:
            self.report({"ERROR"}, "CUPID: the add-on's preferences are unavailable")
            return {"CANCELLED"}
        try:
            proc, lines = start_setup(prefs, self.repair)
        except (SetupProblem, OSError) as exc:
            message = str(exc) if isinstance(exc, SetupProblem) else f"cannot start the set-up: {exc}"
            wm.cupid_setup_error = wm.cupid_setup_message = message
            self.report({"ERROR"}, f"CUPID set-up: {message}")
            return {"CANCELLED"}
        for line in lines:
            print(f"CUPID set-up: {line}", flush=True)
        wm.cupid_setup_error, wm.cupid_setup_running = "", True
        wm.cupid_setup_message = lines[0]
        if bpy.app.background or context.window is None:
            level, message = finish(context, wait_here(context, proc))
            self.report({level}, message)
            return {"FINISHED"} if level == "INFO" else {"CANCELLED"}
        bpy.app.timers.register(_timer, first_interval=0.25, persistent=True)
        self.report({"INFO"}, f"CUPID set-up started: {lines[0]}")
        return {"FINISHED"}


class CUPID_OT_cancel_setup(bpy.types.Operator):
    """Stop the backend set-up (pip and downloads included); what finished stays, and Set Up Backend \
continues from there. The preferences stay as they were"""

    bl_idname = "cupid.cancel_setup"
    bl_label = "Cancel Set-up"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return running()

    def execute(self, context: Any) -> set:
        SETUP["process"].cancel()
        return {"FINISHED"}


class CUPID_OT_open_setup_log(bpy.types.Operator):
    """Open the set-up's log (every line pip and the backend printed) in the system's text viewer"""

    bl_idname = "cupid.open_setup_log"
    bl_label = "Open Set-up Log"

    @classmethod
    def poll(cls, context: Any) -> bool:
        prefs = get_prefs(context)
        return prefs is not None and os.path.isfile(layout_of(prefs).log)

    def execute(self, context: Any) -> set:
        path = layout_of(get_prefs(context)).log
        if bpy.app.background:
            print(f"CUPID set-up log: {path}", flush=True)
        else:
            bpy.ops.wm.path_open(filepath=path)
        self.report({"INFO"}, f"CUPID set-up log: {path}")
        return {"FINISHED"}


class CUPID_OT_remove_backend(bpy.types.Operator):
    """Delete the backend environment the set-up made (PyTorch, the backend, the offline test model; \
about 2 GB or more); downloaded weights stay in the weights cache"""

    bl_idname = "cupid.remove_backend"
    bl_label = "Remove Backend"

    @classmethod
    def poll(cls, context: Any) -> bool:
        prefs = get_prefs(context)
        return not running() and prefs is not None and os.path.isdir(layout_of(prefs).root)

    def invoke(self, context: Any, event: Any) -> set:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: Any) -> set:
        prefs = get_prefs(context)
        layout = layout_of(prefs)
        inside = os.path.normcase(os.path.abspath(layout.root)) + os.sep
        python = os.path.normcase(os.path.abspath(bpy.path.abspath(prefs.python_path))) if prefs.python_path else ""
        if python.startswith(inside):
            MANAGER.stop()
            prefs.python_path = ""
        if prefs.model and os.path.normcase(os.path.abspath(prefs.model)).startswith(inside):
            prefs.model = "hbb1/Cupid"
        shutil.rmtree(layout.root, ignore_errors=True)
        if os.path.isdir(layout.root):
            self.report({"ERROR"}, f"CUPID: could not delete everything in {layout.root} (a file in use?)")
            return {"CANCELLED"}
        context.window_manager.cupid_setup_message = "Backend removed"
        self.report({"INFO"}, f"CUPID: removed the backend in {layout.root}; the weights cache stays")
        return {"FINISHED"}


# ---------------------------------------------------------------------------------------------

_WM_PROPS = ("cupid_setup_running", "cupid_setup_progress", "cupid_setup_step", "cupid_setup_message",
             "cupid_setup_error")
classes = (CUPID_OT_setup_backend, CUPID_OT_cancel_setup, CUPID_OT_open_setup_log, CUPID_OT_remove_backend)


def register() -> None:
    wm = bpy.types.WindowManager
    wm.cupid_setup_running = BoolProperty(default=False, options={"SKIP_SAVE"})
    wm.cupid_setup_progress = FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    wm.cupid_setup_step = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_setup_message = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_setup_error = StringProperty(default="", options={"SKIP_SAVE"},
                                          description="Why the last set-up failed")


def _cancel_running() -> None:
    """Blender quits or the add-on goes: a running set-up stops with it (it resumes next time)."""
    proc = SETUP["process"]
    if proc is not None and not proc.finished:
        proc.cancel()
    SETUP["process"] = None


atexit.register(_cancel_running)


def unregister() -> None:
    _cancel_running()
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    for name in _WM_PROPS:
        if hasattr(bpy.types.WindowManager, name):
            delattr(bpy.types.WindowManager, name)
