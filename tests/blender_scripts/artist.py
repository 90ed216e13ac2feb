"""What a careful artist found (issue #24), in one clean headless Blender with the installed zip and the real
`cupid serve` (tiny model):

    python artist.py CONFIG_JSON

CONFIG_JSON: {"zip", "python", "wide", "square", "phone", "phone_mask", "sideways_mask", "steps", "long_steps",
"results_dir", "backend_dir", "full_model", "result"}.
Cases in order: a 3:2 photo loaded twice and reconstructed from the second datablock (its result's name,
the first stage shown), a square photo reconstructed next (it becomes the scene camera; the backend is up
now), Refine with This Camera on the first result untouched (the camera sent, the selection after it), a
backend stopped with SIGTERM mid-job (the report, the process gone), a phone photo stored portrait with
EXIF Orientation 6 with a mask painted sideways (refused) and upright (its result, which also shows the
backend restarted), an untouched refine of it, a pick on it as Blender shows it, and when the CPU-time
warning shows.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path
import numpy as np

from common import JobWatcher, call, draw_panel, install, run_driver  # noqa: E402


def first_stages(operators) -> list:
    """Record the stage each new job shows first (the add-on's own ReconstructJob, wrapped)."""
    stages: list = []
    original = operators.ReconstructJob

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stages.append(self.poll()[0].stage)

    operators.ReconstructJob = Recording
    return stages


def result_info(name: str) -> dict:
    coll = bpy.data.collections.get(name)
    if coll is None:
        return {}
    cam = next(o for o in coll.objects if o.type == "CAMERA")
    folder = bpy.path.abspath(coll["cupid_bundle"])
    with open(os.path.join(folder, "scene.json"), encoding="utf-8") as fh:
        scene = json.load(fh)
    return {"job_size": list(coll.get("cupid_job_size", [])), "K": scene["camera"]["K"], "image": scene["image"],
            "camera_resolution": list(cam["cupid_resolution"]),
            "background": [list(b.image.size) for b in cam.data.background_images if b.image],
            "objects": sorted(o.name for o in coll.objects)}


def sigterm_when_running(operators, out: dict) -> threading.Thread:
    """Once the backend runs the job, stop it with SIGTERM (as a system shutting down would)."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = operators.ACTIVE["job"]
            if job is not None and job.job_id is not None and job.poll()[0].state == "running":
                proc = operators.MANAGER._proc
                out["proc"] = proc
                out["pid"] = proc.pid
                os.kill(proc.pid, signal.SIGTERM)
                out["sent"] = time.monotonic()
                return
            time.sleep(0.02)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def timed(out: dict, key: str, res: dict, t0: float) -> dict:
    out.setdefault("seconds", {})[key] = round(time.monotonic() - t0, 1)
    return res


def main(cfg: dict) -> dict:
    name, prefs = install(cfg["zip"], cfg["python"])
    operators = sys.modules[name + ".operators"]
    prefs.results_dir = cfg["results_dir"]
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    scene, wm = bpy.context.scene, bpy.context.window_manager
    stages = first_stages(operators)
    out: dict = {}

    # 1. the same photo loaded twice: the result is named after the photo, not "wide.jpg"
    bpy.data.images.load(cfg["wide"], check_existing=False)
    second = bpy.data.images.load(cfg["wide"], check_existing=False)
    out["datablock"] = second.name
    t0 = time.monotonic()
    out["wide"] = timed(out, "wide", call("reconstruct", image=second.name, mode="OBJECT", steps=cfg["steps"]), t0)
    out["wide"]["collections"] = sorted(c.name for c in bpy.data.collections)
    coll = next((c for c in bpy.data.collections if c.name.startswith("CUPID wide")), None)
    out["wide"].update(result_info(coll.name) if coll else {})

    # 2. a square photo: its camera becomes the scene camera, the render 512x512; the backend is up now
    t0 = time.monotonic()
    out["square"] = timed(out, "square", call("reconstruct", filepath=cfg["square"], mode="OBJECT",
                                              steps=cfg["steps"]), t0)
    out["square"]["render"] = [scene.render.resolution_x, scene.render.resolution_y]
    out["square"]["scene_camera"] = scene.camera.name if scene.camera else None

    # 3. refine the first result untouched, its mesh selected (not the scene camera's result)
    if coll is not None:
        mesh = next(o for o in coll.objects if o.type == "MESH" and not o.get("cupid_ground"))
        for o in bpy.context.view_layer.objects.selected:
            o.select_set(False)
        mesh.select_set(True)
        bpy.context.view_layer.objects.active = mesh
        active_before = mesh.name
        watcher = JobWatcher(operators)
        t0 = time.monotonic()
        res = timed(out, "refine", call("refine"), t0)
        active = bpy.context.view_layer.objects.active
        out["refine"] = {**res, "job": watcher.join(), "active_before": active_before,
                         "active": active.name if active else None,
                         "selected": sorted(o.name for o in bpy.context.view_layer.objects.selected),
                         "panel_ops": [e[1][0] for e in draw_panel(name, False) if e[0] == "operator"],
                         **result_info(coll.name)}

    # 4. the backend stopped with SIGTERM while it works
    killed: dict = {}
    thread = sigterm_when_running(operators, killed)
    t0 = time.monotonic()
    res = call("reconstruct", filepath=cfg["wide"], mode="OBJECT", steps=cfg["long_steps"])
    thread.join(timeout=5)
    proc = killed.pop("proc", None)
    out["sigterm"] = {**res, "last_message": wm.cupid_last_message, "seconds": time.monotonic() - t0,
                      "gone_at_report": proc is not None and proc.poll() is not None, "pid": killed.get("pid"),
                      "report_after_kill_s": time.monotonic() - killed.get("sent", t0)}

    # 5. a phone photo (stored portrait, EXIF Orientation 6): one orientation everywhere, the upright one
    out["phone_sideways_mask"] = call("reconstruct", filepath=cfg["phone"], mask=cfg["sideways_mask"],
                                      mode="OBJECT", steps=cfg["steps"])
    phone = bpy.data.images.load(cfg["phone"], check_existing=False)
    out["phone_stored_size"] = list(phone.size)   # what Blender's loader gives: EXIF ignored
    t0 = time.monotonic()
    out["phone"] = timed(out, "phone", call("reconstruct", image=phone.name, mask=cfg["phone_mask"], mode="OBJECT",
                                            steps=cfg["steps"]), t0)
    out["phone"]["new_pid"] = operators.MANAGER._proc.pid if operators.MANAGER._proc else None
    out["phone"].update(result_info("CUPID phone"))
    if "CUPID phone" in bpy.data.collections:
        watcher = JobWatcher(operators)
        t0 = time.monotonic()
        res = timed(out, "phone_refine", call("refine", collection="CUPID phone"), t0)
        out["phone_refine"] = {**res, "job": watcher.join(), **result_info("CUPID phone")}

    # 5b. a pick on the phone photo as Blender shows it (stored pixels): the masks come back upright, the pick's
    # object under it (upright (200, 120) is stored (120, 280) for Orientation 6)
    picking, picks_mod = sys.modules[name + ".picking"], sys.modules[name + ".io.picks"]
    settings = scene.cupid
    settings.image, settings.mode, settings.mask = phone, "SCENE", None
    settings.picks.clear()
    picking.add_pick(settings, picks_mod.Pick("POINT", 120.0, 280.0), *phone.size)
    out["phone_pick"] = call("segment", mode="SCENE")
    mask = settings.mask
    if mask is not None:
        w, h = mask.size
        px = np.empty(w * h * 4, np.float32)
        mask.pixels.foreach_get(px)
        px = px.reshape(h, w, 4)[::-1]
        out["phone_pick"].update(size=[w, h], at_pick=float(px[120, 200, :3].max()))

    # 6. the CPU-time warning: never for a model path that is not there; with Device Auto on a machine the
    # set-up found CPU-only, before the backend has answered
    state = sys.modules[name + ".setup.state"]
    prefs.backend_dir = cfg["backend_dir"]
    layout = sys.modules[name + ".setup_ui"].layout_of(prefs)
    for path in (layout.record, getattr(layout, "env_record", layout.record)):   # the record and its copy
        os.makedirs(os.path.dirname(path), exist_ok=True)
    state.write_record(layout, python=cfg["python"], torch={"kind": "cpu"}, device="cpu")
    warnings = {}
    absent = os.path.join(cfg["backend_dir"], "no-such-model")
    for label, model, device in (("absent_cpu", absent, "cpu"), ("absent_auto", absent, "auto"),
                                 ("full_auto", cfg["full_model"], "auto")):
        prefs.model, prefs.device = model, device
        wm.cupid_device = ""   # the backend has not answered with these settings
        warnings[label] = operators.cpu_warning(bpy.context, 25)
    out["cpu_warning"] = warnings
    out["first_stages"] = stages
    operators.MANAGER.stop()
    return out


if __name__ == "__main__":
    run_driver(main)
