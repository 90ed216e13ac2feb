"""Run inside a fresh headless Blender (bpy module) whose user resources point at an empty directory:
install the built extension zip, enable → disable → enable it, then drive `bpy.ops.cupid.reconstruct`
the way a script would.

    python e2e.py CONFIG_JSON

CONFIG_JSON: {"zip", "python", "photo", "bad_photo", "dead_url", "result", "render"}.
After the install cycle (what is registered at each step), cases in order: a dead remote backend, a bad image, a job cancelled while it runs, a successful
reconstruction (its scene is described and a Cycles render from the built camera is saved). For
each failure the datablock counts, scene camera and render size are recorded before and after.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path

import addon_utils  # noqa: E402
from silhouette import setup_silhouette_render  # noqa: E402  (next to this script)


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


class LayoutRecorder:
    """Stands in for a UILayout in background mode (no window): records what a panel draws."""

    def __init__(self, log: list) -> None:
        self.log = log

    def __getattr__(self, method: str):
        def call(*args, **kwargs):
            self.log.append([method, [a if isinstance(a, (str, int, float)) else type(a).__name__ for a in args],
                             {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}])
            return OperatorProps() if method == "operator" else self
        return call


class OperatorProps:
    """What layout.operator returns: the panel sets the operator's properties on it."""


def draw_panel(module_name: str, running: bool) -> list:
    """Run the CUPID panel's draw() as Blender would, idle or with a job in progress."""
    panel = sys.modules[module_name + ".panel"].CUPID_PT_reconstruct
    wm = bpy.context.window_manager
    wm.cupid_running, wm.cupid_stage, wm.cupid_progress = running, "latent" if running else "", 0.4
    log: list = []
    fake = type("PanelSelf", (), {"layout": LayoutRecorder(log)})()
    try:
        panel.draw(fake, bpy.context)
    finally:
        wm.cupid_running, wm.cupid_stage, wm.cupid_progress = False, "", 0.0
    return log


def snapshot() -> dict:
    scene = bpy.context.scene
    counts = {k: len(getattr(bpy.data, k)) for k in
              ("objects", "meshes", "materials", "images", "cameras", "collections", "node_groups")}
    return {**counts, "camera": scene.camera.name if scene.camera else None,
            "resolution": [scene.render.resolution_x, scene.render.resolution_y]}


def call_reconstruct(**kwargs) -> dict:
    """The operator's outcome: its return set, or the error report Blender raises for it."""
    wm = bpy.context.window_manager
    try:
        ret = sorted(bpy.ops.cupid.reconstruct(**kwargs))
        return {"ret": ret, "message": wm.cupid_last_message}
    except RuntimeError as exc:  # an ERROR report of an operator called from Python
        return {"ret": ["ERROR"], "message": str(exc), "last_message": wm.cupid_last_message}


def cancel_when_submitted(operators, timeout: float = 120.0) -> threading.Thread:
    """Press Cancel (as the panel's button does) once the job is running on the backend."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = operators._ACTIVE["job"]
            if job is not None and job.job_id is not None:  # submitted: the backend runs it
                job.cancel()
                return
            time.sleep(0.05)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


def describe_scene(result: dict) -> None:
    scene = bpy.context.scene
    colls = [c for c in scene.collection.children if c.name.startswith("CUPID")]
    result["collections"] = [c.name for c in colls]
    objs = []
    for obj in (colls[0].objects if colls else []):
        item = {"name": obj.name, "type": obj.type}
        if obj.type == "MESH":
            me = obj.data
            item.update(vertices=len(me.vertices), faces=len(me.polygons), uv_layers=len(me.uv_layers),
                        color_attributes=len(me.color_attributes),
                        materials=[m.name for m in me.materials if m is not None])
            mat = me.materials[0] if len(me.materials) else None
            if mat is not None and mat.use_nodes:
                item["texture_images"] = [n.image.name for n in mat.node_tree.nodes
                                          if n.type == "TEX_IMAGE" and n.image is not None]
        elif obj.type == "CAMERA":
            cam = obj.data
            item.update(lens=cam.lens, sensor_width=cam.sensor_width, sensor_fit=cam.sensor_fit,
                        shift_x=cam.shift_x, shift_y=cam.shift_y,
                        background=[b.image.name for b in cam.background_images if b.image is not None],
                        background_size=[list(b.image.size) for b in cam.background_images if b.image],
                        show_background=cam.show_background_images)
        objs.append(item)
    result["objects"] = objs
    result["scene_camera"] = scene.camera.name if scene.camera else None
    result["resolution"] = [scene.render.resolution_x, scene.render.resolution_y,
                            scene.render.resolution_percentage]


def render_silhouette(path: str) -> None:
    """Cycles render of the CUPID objects alone from the scene camera, alpha = coverage."""
    setup_silhouette_render(bpy.context.scene, path, samples=8)
    bpy.ops.render.render(write_still=True)


def main(cfg: dict) -> dict:
    out: dict = {}
    name, out["install_cycle"] = install_cycle(cfg["zip"])
    operators = sys.modules[name + ".operators"]
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.python_path = cfg["python"]  # the model stays the default recorded when the zip was built
    prefs.device = "cpu"
    for obj in list(bpy.data.objects):  # an empty scene (factory settings would also drop the add-on)
        bpy.data.objects.remove(obj)
    out["panel_idle"], out["panel_running"] = draw_panel(name, False), draw_panel(name, True)

    # 1. a dead backend
    prefs.backend_kind, prefs.remote_url, prefs.remote_token = "REMOTE", cfg["dead_url"], "x"
    before = snapshot()
    out["dead_backend"] = {**call_reconstruct(filepath=cfg["photo"]), "before": before, "after": snapshot()}
    prefs.backend_kind = "LOCAL"

    # 2. a bad image (a text file named .png), through the real local backend
    before = snapshot()
    out["bad_image"] = {**call_reconstruct(filepath=cfg["bad_photo"]), "before": before, "after": snapshot()}

    # 3. a cancelled job (long enough to be cancelled mid-way)
    before = snapshot()
    watcher = cancel_when_submitted(operators)
    t0 = time.monotonic()
    res = call_reconstruct(filepath=cfg["photo"], steps=500)
    watcher.join(timeout=1)
    out["cancelled"] = {**res, "seconds": time.monotonic() - t0, "before": before, "after": snapshot()}

    # 4. success
    out["success"] = call_reconstruct(filepath=cfg["photo"], seed=cfg.get("seed", 0), steps=cfg.get("steps", 0))
    describe_scene(out["success"])
    render_silhouette(cfg["render"])
    out["backend_running"] = operators.MANAGER.running()
    addon_utils.disable(name, default_set=True)   # unregister stops the backend it started
    out["backend_running_after_disable"] = operators.MANAGER.running()
    return out


if __name__ == "__main__":
    config = json.loads(open(sys.argv[1], encoding="utf-8").read())
    try:
        result = main(config)
    except BaseException:
        result = {"crash": traceback.format_exc()}
    with open(config["result"], "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    sys.stdout.flush()
    sys.stderr.flush()
    # bpy 4.5 as a module can deadlock in its static destructors at exit once classes were
    # registered (delayed_close_thread vs GlobalState); the results are written, leave now.
    os._exit(0)
