"""See it early, steer it, pick it (issues #14 and #18) in a clean headless Blender with the installed
zip and the real `cupid serve` (tiny model, tiny background remover, tiny SAM), in one process:

    python steer.py CONFIG_JSON

CONFIG_JSON: {"zip", "python", "jpeg", "scene_photo", "results_dir", "result", "steps", "long_steps",
"picks": [[kind, x0, y0, x1, y1], ...]}.
Cases in order: an opaque JPEG loaded as an image datablock reconstructed in object mode (its stage-1
preview recorded the moment it appears, then replaced by the result), the fit score in the panel, a
refine from the camera as the artist moved and re-lensed it, a refine of a job the backend no longer
has, a job cancelled right after its preview appeared, a result that cannot be built after its preview
(the failure injected), Show Cut-out, an empty pick list, picks on
examples/scene.png turned into masks, and a scene reconstructed with them.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path
import numpy as np
from mathutils import Vector

from common import JobWatcher, call, draw_panel, install, run_driver, snapshot, top_down_pixels  # noqa: E402


def describe(coll) -> dict:
    """Names, types and sizes of a result collection's objects, and its custom properties."""
    objs = []
    for o in sorted(coll.objects, key=lambda o: o.name):
        item = {"name": o.name, "type": o.type, "part": bool(o.get("cupid_part")), "data": o.data.name}
        if o.type == "POINTCLOUD":
            item["points"] = len(o.data.points)
        elif o.type == "MESH":
            item.update(vertices=len(o.data.vertices), fit=o.get("cupid_fit_iou"))
        elif o.type == "CAMERA":
            item["background"] = [[b.image.name, list(b.image.size)] for b in o.data.background_images if b.image]
        objs.append(item)
    return {"name": coll.name, "objects": objs, "props": {k: (list(v) if hasattr(v, "__len__") and not
                                                              isinstance(v, str) else v) for k, v in coll.items()}}


def datablock_names() -> dict:
    return {k: sorted(b.name for b in getattr(bpy.data, k)) for k in ("objects", "meshes", "pointclouds", "cameras",
                                                                      "images", "materials", "collections")}


def bundle_camera(coll) -> dict:
    folder = Path(bpy.path.abspath(coll["cupid_bundle"]))
    scene = json.loads((folder / "scene.json").read_text())
    tr = scene["objects"][0]["transform"]   # the camera as the object's own frame sees it (stage 1's frame)
    R, t, R_o = np.array(scene["camera"]["R"]), np.array(scene["camera"]["t"]), np.array(tr["R"])
    own = {"K": scene["camera"]["K"], "R": (R @ R_o).tolist(), "t": ((R @ np.array(tr["t"]) + t) / tr["scale"]).tolist()}
    return {"K": scene["camera"]["K"], "R": scene["camera"]["R"], "t": scene["camera"]["t"], "image": scene["image"],
            "fits": [o.get("fit") for o in scene["objects"]], "folder": folder.name, "object_frame": own,
            "up": scene.get("up"), "units": scene.get("units")}


def as_lists(K, R, t) -> dict:
    return {"K": np.asarray(K).tolist(), "R": np.asarray(R).tolist(), "t": np.asarray(t).tolist()}


def main(cfg: dict) -> dict:
    name, prefs = install(cfg["zip"], cfg["python"])
    operators = sys.modules[name + ".operators"]
    camera_mod = sys.modules[name + ".camera"]
    picks_mod = sys.modules[name + ".io.picks"]
    picking = sys.modules[name + ".picking"]
    prefs.results_dir = cfg["results_dir"]   # the .blend is not saved: results go to the preference's folder
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    scene, settings = bpy.context.scene, bpy.context.scene.cupid
    out: dict = {"previews": []}
    watch = {"cancel_after_preview": False}

    # every preview is recorded on the main thread the moment it is built (the add-on's own function)
    build_preview = operators.build_preview

    def recording_build_preview(preview, photo, scene_, base, sfx):
        built = build_preview(preview, photo, scene_, base, sfx)
        job = operators.ACTIVE["job"]
        client = operators.MANAGER.client(operators.backend_config(bpy.context))
        coll = built.collection
        cam = next(o for o in coll.objects if o.type == "CAMERA")
        entry = {"job_state": client.status(job.job_id)["state"], "job_id": job.job_id, **describe(coll),
                 "preview_camera": as_lists(preview.K, preview.R, preview.t), "size": [preview.width, preview.height],
                 "voxels": int(len(preview.voxels)), "res": int(preview.res),
                 "read_camera": as_lists(*camera_mod.read_camera(scene_, cam)[:3]),
                 "scene_camera": scene_.camera.name if scene_.camera else None}
        out["previews"].append(entry)
        if watch["cancel_after_preview"]:
            job.cancel()
        return built

    operators.build_preview = recording_build_preview

    # 1. an opaque JPEG loaded as an image datablock, object mode, no mask
    jpeg = bpy.data.images.load(cfg["jpeg"])
    before = datablock_names()
    t0 = time.monotonic()
    res = call("reconstruct", image=jpeg.name, mode="OBJECT", steps=cfg["steps"])
    out["opaque"] = {**res, "seconds": time.monotonic() - t0, "before": before, "after": datablock_names()}
    coll = bpy.data.collections.get("CUPID coffee")
    if coll is not None:
        out["opaque"].update(result=describe(coll), camera=bundle_camera(coll))
        mesh = next(o for o in coll.objects if o.type == "MESH")
        bpy.context.view_layer.objects.active = mesh
        out["panel_result"] = draw_panel(name, False)

    # 2. refine with the camera moved and re-lensed by the artist
    if coll is not None:
        cam = next(o for o in coll.objects if o.type == "CAMERA")
        cam.location = cam.location + Vector((0.04, -0.03, 0.02))
        cam.data.lens = cam.data.lens * 1.08
        bpy.context.view_layer.update()
        moved = camera_mod.read_camera(scene, cam)
        mesh = next(o for o in coll.objects if o.type == "MESH" and not o.get("cupid_ground"))
        moved_own = sys.modules[name + ".io.camera"].camera_in_object_frame(moved[1], moved[2],
                                                                             [list(r) for r in mesh.matrix_world])
        before = datablock_names()
        watcher = JobWatcher(operators)
        t0 = time.monotonic()
        res = call("refine", collection=coll.name)
        out["refine"] = {**res, "seconds": time.monotonic() - t0, "job": watcher.join(), "before": before,
                         "after": datablock_names(), "moved": {**as_lists(*moved[:3]), "size": list(moved[3:])},
                         "moved_object_frame": as_lists(moved[0], *moved_own)}
        out["refine"].update(result=describe(coll), camera=bundle_camera(coll))

        # 3. a refine of a job the backend no longer has
        job_id = coll["cupid_job"]
        coll["cupid_job"] = "f" * 32
        before = snapshot()
        names = datablock_names()
        res = call("refine", collection=coll.name)
        out["expired"] = {**res, "before": before, "after": snapshot(), "names_kept": names == datablock_names()}
        coll["cupid_job"] = job_id

    # 4. a job cancelled right after its preview appeared: nothing of it stays
    before, names = snapshot(), datablock_names()
    watch["cancel_after_preview"] = True
    previews = len(out["previews"])
    res = call("reconstruct", image=jpeg.name, mode="OBJECT", steps=cfg["long_steps"])
    watch["cancel_after_preview"] = False
    out["cancelled"] = {**res, "before": before, "after": snapshot(), "names_kept": names == datablock_names(),
                        "diff": {k: sorted(set(datablock_names()[k]) ^ set(names[k])) for k in names},
                        "preview_seen": len(out["previews"]) > previews}

    # 4b. a result that cannot be built after its preview was shown (an unreadable bundle, say): nothing stays
    scene_builder = operators.scene_builder
    build = scene_builder.build_from_bundle

    def unbuildable(*args, **kwargs):
        raise scene_builder.SceneBuildError("the bundle is unreadable (injected by the test)")

    before, names = snapshot(), datablock_names()
    previews = len(out["previews"])
    scene_builder.build_from_bundle = unbuildable
    try:
        res = call("reconstruct", image=jpeg.name, mode="OBJECT", steps=cfg["steps"])
    finally:
        scene_builder.build_from_bundle = build
    out["unbuildable"] = {**res, "before": before, "after": snapshot(), "names_kept": names == datablock_names(),
                          "diff": {k: sorted(set(datablock_names()[k]) ^ set(names[k])) for k in names},
                          "preview_seen": len(out["previews"]) > previews,
                          "kept_folders": sorted(p.name for p in Path(cfg["results_dir"]).iterdir())}

    # 5. Show Cut-out: object mode's removed background, before any reconstruction
    settings.image, settings.mode = jpeg, "OBJECT"
    out["panel_object"] = draw_panel(name, False)
    res = call("show_cutout")
    cut = bpy.data.images.get("coffee cut-out")
    out["cutout"] = {**res}
    if cut is not None:
        alpha = top_down_pixels(cut)[..., 3]
        out["cutout"].update(size=list(cut.size), alpha_values=sorted(set(np.unique(alpha).round(3).tolist())),
                             opaque_share=float((alpha > 0.5).mean()), packed=cut.packed_file is not None)

    # 6. scene mode: an empty pick list is refused before anything is sent
    scene_photo = bpy.data.images.load(cfg["scene_photo"])
    settings.image, settings.mode, settings.mask = scene_photo, "SCENE", None
    settings.picks.clear()
    before = datablock_names()
    t0 = time.monotonic()
    out["no_picks"] = {**call("segment", mode="SCENE"), "seconds": time.monotonic() - t0,
                       "names_kept": before == datablock_names()}

    # 7. picks as the modal makes them (Image Editor view coordinates -> photo pixels), then their masks
    W, H = scene_photo.size
    for kind, x0, y0, x1, y1 in cfg["picks"]:
        ends = [(x0, y0), (x0, y0)] if kind == "POINT" else [(x0, y0), (x1, y1)]
        views = [(x / W, 1.0 - y / H) for x, y in ends]                     # where the View2D has them
        screen = [(0.0, 0.0), (0.0, 0.0)] if kind == "POINT" else [(0.0, 0.0), (80.0, 80.0)]
        pick = picks_mod.pick_from_drag(screen[0], screen[1], picks_mod.view_to_photo(*views[0], W, H),
                                        picks_mod.view_to_photo(*views[1], W, H), W, H)
        picking.add_pick(settings, pick, W, H)
    out["picks"] = [[p.kind, p.x0, p.y0, p.x1, p.y1] for p in settings.picks]
    out["panel_scene"] = draw_panel(name, False)
    out["segment"] = call("segment", mode="SCENE")
    mask = settings.mask
    if mask is not None:
        rgb = np.round(top_down_pixels(mask)[..., :3] * 255).astype(int)
        key = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
        # label k of the answer = the k-th prompt (points first, then boxes): named by the colour under it
        out["segment"].update(mask=mask.name, size=list(mask.size), packed=mask.packed_file is not None,
                              colours=sorted(int(v) for v in np.unique(key) if v),
                              label_map=key.astype(np.int64).tolist())
        over = bpy.data.images.get("scene masks over photo")
        out["segment"]["overlay"] = list(over.size) if over is not None else None

    # 8. the scene reconstructed with those masks (the panel's photo and mask)
    watcher = JobWatcher(operators)
    res = call("reconstruct", mode="SCENE", steps=cfg["steps"])
    out["scene"] = {**res, "job": watcher.join()}
    coll = bpy.data.collections.get("CUPID scene")
    if coll is not None:
        out["scene"]["result"] = describe(coll)
    out["clear"] = call("clear_picks")
    out["picks_after_clear"] = len(settings.picks)
    operators.MANAGER.stop()
    return out


if __name__ == "__main__":
    run_driver(main)
