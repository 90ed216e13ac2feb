"""Run inside a clean headless Blender (bpy 5.0 or 4.2 in an environment of its own, an empty home and
user folder, no checkout importable): install the artist's zip, then Set Up Backend the way a script
does, and reconstruct with the backend it made.

    python setup_backend.py CONFIG_JSON

CONFIG_JSON: {"zip", "photo" (an opaque JPEG), "result", "repo" (the checkout that must not be
reachable), "full" (true: the failure cases too)}.
With "full": the panel before the set-up, a reconstruction without a backend, Online Access off, too
little disk space (faked), a failing pip (no package index), a cancel while pip installs PyTorch, then
the set-up that resumes, and the UI's timer. Always: the set-up, a second one (a no-op), a reconstruction
with the backend it made, what that backend imports from, and disabling the add-on (without "full":
Remove Backend first).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path

import addon_utils  # noqa: E402
from common import draw, draw_panel, labels, run_driver  # noqa: E402  (copied beside this script)


def setup(**kwargs) -> dict:
    """bpy.ops.cupid.setup_backend(): its return set (or the ERROR Blender raises), message and seconds."""
    wm = bpy.context.window_manager
    t0 = time.monotonic()
    try:
        ret = sorted(bpy.ops.cupid.setup_backend(**kwargs))
    except RuntimeError as exc:
        ret, error = ["ERROR"], str(exc)
    else:
        error = ""
    return {"ret": ret, "error": error, "message": wm.cupid_setup_message, "seconds": time.monotonic() - t0}


def processes_under(folder: str) -> list[str]:
    """Command lines of the running processes that name `folder` (Linux: /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if folder in cmd:
                out.append(cmd)
    return out


class CancelDuringTorch:
    """Presses Cancel (from another thread, as the button does) once pip has been installing PyTorch
    for a moment; records what ran under the backend folder just before."""

    def __init__(self, setup_ops, folder: str) -> None:
        self.setup_ops, self.folder, self.seen = setup_ops, folder, {}
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline, started = time.monotonic() + 600, None
        while time.monotonic() < deadline:
            proc = self.setup_ops.SETUP["process"]
            status = proc.poll()[0] if proc is not None else None
            if status is not None and status.step == "torch" and started is None:
                started = time.monotonic()
            if started is not None and time.monotonic() - started > 3:
                self.seen["running_before"] = [c for c in processes_under(self.folder) if "pip" in c]
                self.seen["step"] = status.step
                proc.cancel()
                return
            time.sleep(0.05)

    def join(self) -> dict:
        self.thread.join(timeout=5)
        return self.seen


def main(cfg: dict) -> dict:
    out: dict = {"blender": bpy.app.version_string, "python": sys.version.split()[0]}
    repo = os.path.realpath(cfg["repo"])
    own = tuple(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix))   # Blender's environment itself
    out["clean"] = {"cupid": importlib.util.find_spec("cupid") is not None,
                    "cupid_blender": importlib.util.find_spec("cupid_blender") is not None,
                    "repo_on_path": [p for p in sys.path if os.path.realpath(p or ".").startswith(repo)
                                     and not os.path.realpath(p).startswith(own)],
                    "home": os.path.expanduser("~"),
                    "home_files": sorted(str(p.relative_to(Path.home())) for p in Path.home().rglob("*"))}

    bpy.ops.extensions.package_install_files(repo="user_default", filepath=cfg["zip"], enable_on_install=True)
    name = next(m.__name__ for m in addon_utils.modules() if m.__name__.endswith(".cupid"))
    setup_ops = sys.modules[name + ".setup_ops"]
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.device = "cpu"
    folder = sys.modules[name + ".setup_ui"].backend_folder(prefs)
    out["installed"] = {"module": name, "python_path": prefs.python_path, "model": prefs.model, "folder": folder,
                        "addon_dir": setup_ops.ADDON_DIR, "wheel": setup_ops.bundled_wheel()}
    out["panel_before"] = draw_panel(name, False)

    if not cfg.get("full"):   # the artist allows Online Access (Preferences > System > Network)
        bpy.context.preferences.system.use_online_access = True
    else:
        wm = bpy.context.window_manager
        try:
            bpy.ops.cupid.reconstruct(filepath=cfg["photo"], mode="OBJECT", steps=2)
            out["reconstruct_before"] = {"ret": "no error"}
        except RuntimeError as exc:
            out["reconstruct_before"] = {"ret": "ERROR", "message": str(exc)}

        bpy.context.preferences.system.use_online_access = False
        out["offline"] = {**setup(), "online_access": bpy.app.online_access, "folder_made": os.path.isdir(folder)}
        bpy.context.preferences.system.use_online_access = True

        real = shutil.disk_usage
        Usage = namedtuple("Usage", "total used free")
        shutil.disk_usage = lambda path: Usage(100 * 2 ** 30, 99 * 2 ** 30, 2 ** 30)   # 1 GB free
        try:
            out["no_space"] = {**setup(), "state": os.path.isfile(os.path.join(folder, "setup-state.json"))}
        finally:
            shutil.disk_usage = real

        saved = {k: os.environ.get(k) for k in ("PIP_CONFIG_FILE", "PIP_NO_INDEX", "PIP_FIND_LINKS")}
        empty = os.path.join(cfg["tmp"], "no packages here")
        os.makedirs(empty, exist_ok=True)
        os.environ.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=empty)   # pip finds nothing
        try:
            out["failing_pip"] = {**setup(), "prefs": [prefs.python_path, prefs.model],
                                  "state": json.loads(Path(folder, "setup-state.json").read_text())["done"],
                                  "record": os.path.isfile(os.path.join(folder, "setup.json")),
                                  "panel": labels(draw_panel(name, False))}
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

        watcher = CancelDuringTorch(setup_ops, folder)
        res = setup()
        seen = watcher.join()
        time.sleep(1)
        out["cancelled"] = {**res, **seen, "running_after": processes_under(folder),
                            "prefs": [prefs.python_path, prefs.model], "running": wm.cupid_setup_running,
                            "record": os.path.isfile(os.path.join(folder, "setup.json")),
                            "state": sorted(json.loads(Path(folder, "setup-state.json").read_text())["done"])}

    out["setup"] = {**setup(), "prefs": [prefs.python_path, prefs.model]}
    out["log"] = Path(folder, "setup.log").read_text(encoding="utf-8")
    out["record"] = json.loads(Path(folder, "setup.json").read_text(encoding="utf-8"))
    out["again"] = setup()
    if cfg.get("full"):   # the UI's way: the set-up started, then followed by the timer until it ends
        prefs.python_path = ""
        wm, proc = bpy.context.window_manager, setup_ops.start_setup(prefs, False)[0]
        ticks, t0 = 0, time.monotonic()
        while setup_ops._timer() is not None and time.monotonic() - t0 < 300:
            ticks += 1
            time.sleep(0.25)
        out["timer"] = {"ticks": ticks, "running": wm.cupid_setup_running, "progress": wm.cupid_setup_progress,
                        "message": wm.cupid_setup_message, "python_path": prefs.python_path,
                        "process": setup_ops.SETUP["process"] is None}
    out["panel_after"] = draw_panel(name, False)
    kept, prefs.python_path = prefs.python_path, os.path.join(cfg["tmp"], "gone", "python")
    out["panel_gone"] = draw_panel(name, False)       # the configured environment was deleted
    prefs.python_path = kept
    proxy = type("PrefsDrawn", (), {"__getattr__": lambda self, key: getattr(prefs, key)})()
    out["prefs_drawn"] = draw(type(prefs).draw, proxy)
    probe = subprocess.run([prefs.python_path, "-c", "import cupid, torch, sys; print(cupid.__file__); "
                            "print(torch.__version__); print(sys.prefix)"], capture_output=True, text=True)
    out["backend_imports"] = probe.stdout.splitlines() + [probe.stderr[-2000:]]

    before = {o.name for o in bpy.data.objects}
    try:
        ret = sorted(bpy.ops.cupid.reconstruct(filepath=cfg["photo"], mode="OBJECT", steps=2))
        message = bpy.context.window_manager.cupid_last_message
    except RuntimeError as exc:
        ret, message = ["ERROR"], str(exc)
    added = [o for o in bpy.data.objects if o.name not in before]
    out["reconstruct"] = {"ret": ret, "message": message,
                          "added": sorted([o.type, o.name] for o in added),
                          "faces": sum(len(o.data.polygons) for o in added if o.type == "MESH"),
                          "scene_camera": bpy.context.scene.camera.name if bpy.context.scene.camera else None}
    manager = sys.modules[name + ".backend_manager"].MANAGER
    out["backend_running"] = manager.running()
    if not cfg.get("full"):   # Remove Backend: the environment goes, the preferences forget it
        ret = sorted(bpy.ops.cupid.remove_backend())
        out["removed"] = {"ret": ret, "folder": os.path.isdir(folder), "python_path": prefs.python_path,
                          "backend_running": manager.running(),
                          "panel": "cupid.setup_backend" in [e[1][0] for e in draw_panel(name, False)
                                                             if e[0] == "operator"]}
    addon_utils.disable(name, default_set=True)
    out["disabled"] = {"enabled": addon_utils.check(name)[1], "backend_running": manager.running(),
                       "operator": hasattr(bpy.types, "CUPID_OT_setup_backend")}
    return out


if __name__ == "__main__":
    run_driver(main)
