"""What the Blender driver scripts share: install the built zip, record what a panel or menu draws,
snapshot the scene, call an operator the way a script does, watch the running job, and end the
process cleanly.

A driver is `python DRIVER.py CONFIG_JSON`; it writes its findings to config["result"] as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path
import numpy as np

import addon_utils  # noqa: E402

COUNTED = ("objects", "meshes", "materials", "images", "cameras", "collections", "node_groups", "pointclouds")


def registered() -> dict:
    return {
        "operator": hasattr(bpy.types, "CUPID_OT_reconstruct") and "reconstruct" in dir(bpy.ops.cupid),
        "panel": any(n.startswith("CUPID_PT_") for n in dir(bpy.types)),
        "scene_settings": hasattr(bpy.types.Scene, "cupid"),
    }


def install_cycle(zip_path: str) -> tuple[str, list]:
    """Install and enable the zip, then disable and enable it again; (module name, steps)."""
    bpy.ops.extensions.package_install_files(repo="user_default", filepath=zip_path, enable_on_install=True)
    name = next(m.__name__ for m in addon_utils.modules() if m.__name__.endswith(".cupid"))
    prefs = bpy.context.preferences.addons[name].preferences
    steps = [{"step": "install", "module": name, "enabled": addon_utils.check(name)[1], **registered(),
              "default_python": prefs.python_path, "default_model": prefs.model}]
    addon_utils.disable(name, default_set=True)
    steps.append({"step": "disable", "enabled": addon_utils.check(name)[1], **registered()})
    addon_utils.enable(name, default_set=True)
    steps.append({"step": "enable", "enabled": addon_utils.check(name)[1], **registered()})
    return name, steps


def install(zip_path: str, python: str) -> tuple[str, Any]:
    """Install and enable the zip for a backend on the CPU; (module name, preferences)."""
    bpy.ops.extensions.package_install_files(repo="user_default", filepath=zip_path, enable_on_install=True)
    name = next(m.__name__ for m in addon_utils.modules() if m.__name__.endswith(".cupid"))
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.python_path, prefs.device = python, "cpu"
    return name, prefs


class LayoutRecorder:
    """Stands in for a UILayout in background mode (no window): records what a panel draws."""

    def __init__(self, log: list) -> None:
        self.log = log

    def __getattr__(self, method: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.log.append([method, [a if isinstance(a, (str, int, float)) else type(a).__name__ for a in args],
                             {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}])
            return OperatorProps() if method == "operator" else self
        return call


class OperatorProps:
    """What layout.operator returns: the panel sets the operator's properties on it."""


def draw(draw_function: Callable, owner: Any = None) -> list:
    """What `draw_function(self, context)` draws, with `self.layout` recorded."""
    log: list = []
    fake = owner if owner is not None else type("Drawn", (), {})()
    fake.layout = LayoutRecorder(log)
    draw_function(fake, bpy.context)
    return log


def draw_panel(module_name: str, running: bool) -> list:
    """Run the CUPID panel's draw() as Blender would, idle or with a job in progress."""
    panel = sys.modules[module_name + ".panel"].CUPID_PT_reconstruct
    wm = bpy.context.window_manager
    wm.cupid_running, wm.cupid_stage, wm.cupid_progress = running, "latent" if running else "", 0.4
    try:
        return draw(panel.draw)
    finally:
        wm.cupid_running, wm.cupid_stage, wm.cupid_progress = False, "", 0.0


def labels(log: list) -> list:
    return [e[2].get("text", "") for e in log if e[0] == "label"]


def snapshot() -> dict:
    scene = bpy.context.scene
    counts = {k: len(getattr(bpy.data, k)) for k in COUNTED}
    return {**counts, "camera": scene.camera.name if scene.camera else None,
            "resolution": [scene.render.resolution_x, scene.render.resolution_y]}


def top_down_pixels(img: Any) -> np.ndarray:
    """float32 [H, W, 4] of an image datablock, top row first."""
    w, h = img.size
    buf = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(buf)
    return buf.reshape(h, w, 4)[::-1]


def call(op: str, **kwargs: Any) -> dict:
    """bpy.ops.cupid.<op>: its return set, or the error report Blender raises for it."""
    wm = bpy.context.window_manager
    try:
        ret = sorted(getattr(bpy.ops.cupid, op)(**kwargs))
        return {"ret": ret, "message": wm.cupid_last_message, "raised": None}
    except RuntimeError as exc:  # an ERROR report of an operator called from Python
        return {"ret": ["ERROR"], "message": str(exc), "last_message": wm.cupid_last_message,
                "raised": type(exc).__name__}


class JobWatcher:
    """Watches the add-on's running job from another thread: records what it sends and, when
    asked, presses Cancel once the backend runs it."""

    def __init__(self, operators: Any, cancel: bool = False, timeout: float = 300.0) -> None:
        self.operators, self.cancel, self.seen = operators, cancel, {}
        self._thread = threading.Thread(target=self._watch, args=(timeout,), daemon=True)
        self._thread.start()

    def _watch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.operators.ACTIVE["job"]
            if job is not None and not self.seen:
                r, up = job.request, job.request.upload
                self.seen = {"seed": r.seed, "steps": r.steps, "mode": r.mode}
                if up is not None:
                    self.seen.update(upload_size=[up.upload_width, up.upload_height], size=[up.width, up.height],
                                     image_bytes=len(up.image), mask=up.mask)
                if r.refine is not None:
                    self.seen.update(from_job=r.refine.from_job, camera={k: [list(map(float, row)) for row in v]
                                     if k != "t" else list(map(float, v)) for k, v in r.refine.camera.items()})
            if job is not None and job.job_id is not None:  # submitted: the backend runs it
                self.seen["job_id"] = job.job_id
                if self.cancel:
                    job.cancel()
                return
            time.sleep(0.02)

    def join(self) -> dict:
        self._thread.join(timeout=5)
        return self.seen


def run_driver(main: Callable[[dict], dict]) -> None:
    """Run `main(config)`, write its result (or the crash) and leave at once."""
    config = json.loads(open(sys.argv[1], encoding="utf-8").read())
    try:
        result = main(config)
    except BaseException:
        result = {"crash": traceback.format_exc()}
    with open(config["result"], "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))
    sys.stdout.flush()
    sys.stderr.flush()
    # bpy 4.5 as a module can deadlock in its static destructors at exit once classes were
    # registered (delayed_close_thread vs GlobalState); the results are written, leave now.
    os._exit(0)
