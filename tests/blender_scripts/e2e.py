"""Run inside a fresh headless Blender (bpy module) whose user resources point at an empty directory:
install the built extension zip, enable → disable → enable it, then drive the add-on the way an
artist's script would, in one Blender process.

    python e2e.py CONFIG_JSON

CONFIG_JSON: {"zip", "python", "photo", "bad_photo", "dead_url", "result", "render", "blend", "ellipse",
"mask_file", "black_file", "big_photo", "exr_photo", "cli_bundle", "remote_url", "remote_token",
"fake_hub", "full_model"}.
After the install cycle (what is registered at each step) and the panel's drawing, cases in order:
a dead remote backend, a bad image, a job cancelled while it runs, an empty mask, a successful
reconstruction (described, its kept result listed, a Cycles render from its camera saved), the
artist's own render size, an import from File › Import, masks painted in Blender, a re-run with a
mask, a 6000-pixel TIFF, an EXR and a linear float image, a remote backend, the model and device the
panel shows, every control's tooltip, and Stop Backend. For each failure the datablock counts,
scene camera and render size are recorded before and after.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path
import numpy as np

import addon_utils  # noqa: E402
from common import (JobWatcher, call, draw, draw_panel, install_cycle, labels, run_driver,  # noqa: E402
                    snapshot, top_down_pixels)
from silhouette import setup_silhouette_render  # noqa: E402  (next to this script)


def describe_scene(result: dict, collection: str | None = None) -> None:
    scene = bpy.context.scene
    colls = [c for c in scene.collection.children if c.name.startswith("CUPID")]
    if collection is not None:
        colls = [c for c in colls if c.name == collection]
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
        elif obj.type == "POINTCLOUD":
            pc = obj.data
            item.update(points=len(pc.points), hide_render=obj.hide_render, hidden=obj.hide_get(),
                        matrix_world=[list(r) for r in obj.matrix_world],
                        attributes={a.name: a.data_type for a in pc.attributes if not a.name.startswith(".")})
            for attr, key, width in (("opacity", "value", 1), ("scale", "vector", 3), ("rotation", "value", 4),
                                     ("color", "color", 4)):
                buf = np.empty(len(pc.points) * width, np.float32)
                pc.attributes[attr].data.foreach_get(key, buf)
                item[f"{attr}_mean"] = buf.reshape(-1, width).mean(axis=0).tolist()
        objs.append(item)
    result["objects"] = objs
    result["bundle_path"] = bpy.path.abspath(colls[0]["cupid_bundle"]) if colls else None
    result["bundle_prop"] = colls[0]["cupid_bundle"] if colls else None
    result["scene_camera"] = scene.camera.name if scene.camera else None
    result["resolution"] = [scene.render.resolution_x, scene.render.resolution_y,
                            scene.render.resolution_percentage]


def render_silhouette(path: str) -> None:
    """Cycles render of the CUPID objects alone from the scene camera, alpha = coverage: the composite's
    ground plane (a shadow catcher) hidden, the compositor (the photo behind) off."""
    scene = bpy.context.scene
    setup_silhouette_render(scene, path, samples=8)
    grounds = [o for o in scene.objects if o.get("cupid_ground")]
    for o in grounds:
        o.hide_render = True
    scene.render.use_compositing = False
    bpy.ops.render.render(write_still=True)
    scene.render.use_compositing = True
    for o in grounds:
        o.hide_render = False


def ellipse(w: int, h: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """bool [h, w], top row first: the pixels whose centre lies inside the ellipse."""
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def paint(img: bpy.types.Image, inside: np.ndarray) -> None:
    """White where `inside` (top row first), black elsewhere, opaque, as a brush would leave it."""
    px = np.zeros(inside.shape + (4,), np.float32)
    px[inside] = 1.0
    px[..., 3] = 1.0
    img.pixels.foreach_set(px[::-1].ravel())
    img.update()


def camera_of(collection: str) -> dict:
    """K, R, t, size of the bundle kept for a collection (its scene.json)."""
    coll = bpy.data.collections[collection]
    scene = json.loads((Path(bpy.path.abspath(coll["cupid_bundle"])) / "scene.json").read_text())
    return {"K": scene["camera"]["K"], "R": scene["camera"]["R"], "t": scene["camera"]["t"],
            "image": scene["image"], "folder": Path(bpy.path.abspath(coll["cupid_bundle"])).name}


def result_names(collection: str) -> dict:
    """The names a result's datablocks got."""
    coll = bpy.data.collections[collection]
    cam = next(o for o in coll.objects if o.type == "CAMERA")
    return {"collection": coll.name, "camera": cam.name, "photo": cam.data.background_images[0].image.name,
            "objects": sorted(o.name for o in coll.objects if o.type != "CAMERA"),
            "folder": Path(bpy.path.abspath(coll["cupid_bundle"])).name}


def update() -> None:
    """What Blender does after an edit: evaluate the depsgraph (the add-on's handler runs)."""
    bpy.context.view_layer.update()


def main(cfg: dict) -> dict:
    out: dict = {}
    name, out["install_cycle"] = install_cycle(cfg["zip"])
    operators = sys.modules[name + ".operators"]
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.python_path = cfg["python"]  # the model stays the default recorded when the zip was built
    prefs.device = "cpu"
    for obj in list(bpy.data.objects):  # an empty scene (factory settings would also drop the add-on)
        bpy.data.objects.remove(obj)
    bpy.ops.wm.save_as_mainfile(filepath=cfg["blend"])  # a saved file: results are kept beside it
    out["panel_idle"], out["panel_running"] = draw_panel(name, False), draw_panel(name, True)
    W, H = 480, 360
    inside = ellipse(W, H, *cfg["ellipse"])

    # 1. a dead backend
    prefs.backend_kind, prefs.remote_url, prefs.remote_token = "REMOTE", cfg["dead_url"], "x"
    before = snapshot()
    out["dead_backend"] = {**call("reconstruct", filepath=cfg["photo"]), "before": before, "after": snapshot()}
    prefs.backend_kind = "LOCAL"

    # 2. a bad image (a text file named .png), through the real local backend
    before = snapshot()
    out["bad_image"] = {**call("reconstruct", filepath=cfg["bad_photo"]), "before": before, "after": snapshot()}

    # 3. a cancelled job (long enough to be cancelled mid-way)
    before = snapshot()
    watcher = JobWatcher(operators, cancel=True)
    t0 = time.monotonic()
    res = call("reconstruct", filepath=cfg["photo"], steps=500)
    watcher.join()
    out["cancelled"] = {**res, "seconds": time.monotonic() - t0, "before": before, "after": snapshot()}

    # 4. an empty mask painted in Blender: refused at submit, before any job exists
    empty = bpy.data.images.new("empty mask", W, H)
    paint(empty, np.zeros((H, W), bool))
    before = snapshot()
    watcher = JobWatcher(operators, timeout=1)
    t0 = time.monotonic()
    res = call("reconstruct", filepath=cfg["photo"], mask=empty.name)
    out["empty_mask"] = {**res, "seconds": time.monotonic() - t0, "job": watcher.join(), "before": before,
                         "after": snapshot()}
    bpy.data.images.remove(empty)

    # 5. success, with seed 0 chosen although the preferences' default seed is 7
    prefs.default_seed = 7
    watcher = JobWatcher(operators)
    out["success"] = call("reconstruct", filepath=cfg["photo"], seed=cfg.get("seed", 0), steps=cfg.get("steps", 0))
    out["success"]["job"] = watcher.join()
    describe_scene(out["success"])
    render_silhouette(cfg["render"])
    out["success"]["kept_files"] = sorted(p.name for p in Path(out["success"]["bundle_path"]).iterdir())
    out["success"]["camera"] = camera_of("CUPID monkey")
    # the Photo Texture slider of the result box moves the material's mix of generated and photo
    coll = bpy.data.collections["CUPID monkey"]
    mix = next(o for o in coll.objects if o.type == "MESH").data.materials[0].node_tree.nodes.get("CUPID Photo Texture")
    if mix is not None:
        out["success"]["photo_mix"] = {"default": mix.inputs[0].default_value,
                                       "inputs": [ln.from_node.image.name for ln in mix.inputs[6].links + mix.inputs[7].links]}
        coll.cupid_photo_texture = 0.25
        out["success"]["photo_mix"]["slid"] = mix.inputs[0].default_value
        coll.cupid_photo_texture = 1.0
    out["backend_running"] = operators.MANAGER.running()

    # 6. the artist's own render size stays; the percentage too
    r = bpy.context.scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1000, 500, 50
    update()
    bpy.context.scene.frame_set(2)
    out["resolution_kept"] = [r.resolution_x, r.resolution_y, r.resolution_percentage]

    # 7. File › Import › Import CUPID Result (scene.json): the menu entry, then a CLI bundle
    menu = [fn for fn in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize() if fn.__module__.startswith(name)]
    out["import_menu"] = [entry for fn in menu for entry in draw(fn) if entry[0] == "operator"]
    res = call("import_bundle", filepath=str(Path(cfg["cli_bundle"]) / "scene.json"))
    imported = next(c.name for c in bpy.context.scene.collection.children
                    if c.name.startswith("CUPID") and c.name not in out["success"]["collections"])
    out["imported"] = {**res, **result_names(imported)}

    # 8. masks painted in Blender: a new image, a file, and an edited file all send their brightness
    painted = bpy.data.images.new("painted mask", W, H)
    paint(painted, inside)
    edited = bpy.data.images.load(cfg["black_file"])
    paint(edited, inside)
    out["masks"] = {}
    for label, mask in (("datablock", painted.name), ("file", cfg["mask_file"]), ("edited", edited.name)):
        upload, _ = operators.prepare_inputs(bpy.context, filepath=cfg["photo"], mask=mask)
        out["masks"][label] = upload.mask.hex()
    out["masks"]["edited_is_dirty"] = edited.is_dirty

    # 9. a re-run with the painted mask (seed -1: the preferences' 7): a different camera, one suffix
    watcher = JobWatcher(operators)
    existing = set(bpy.data.collections.keys())
    out["masked"] = call("reconstruct", filepath=cfg["photo"], mask=painted.name)
    out["masked"]["job"] = watcher.join()
    added = sorted(set(bpy.data.collections.keys()) - existing)
    if out["masked"]["ret"] == ["FINISHED"] and len(added) == 1:
        out["masked"].update(names=result_names(added[0]), camera=camera_of(added[0]))

    # 10. a 6000-pixel TIFF: a downscaled copy goes up, the camera comes back in the TIFF's pixels
    watcher = JobWatcher(operators)
    t0 = time.monotonic()
    out["big"] = call("reconstruct", filepath=cfg["big_photo"])
    out["big"]["seconds"] = time.monotonic() - t0
    out["big"]["job"] = watcher.join()
    out["big"]["job"].pop("mask", None)
    big = next((c.name for c in bpy.data.collections if c.name.startswith("CUPID monkey_big")), None)
    if big is not None:
        out["big"]["camera"] = camera_of(big)
        out["big"]["kept_files"] = sorted(p.name for p in (Path(cfg["blend"]).parent / "cupid_results" /
                                                            out["big"]["camera"]["folder"]).iterdir())
    out["big"]["resolution"] = [r.resolution_x, r.resolution_y, r.resolution_percentage]

    # 3 (cont.). switching cameras gives each its photo's size, keeping the artist's percentage
    bpy.context.scene.camera = bpy.data.objects["monkey camera"]
    update()
    out["resolution_switched"] = [r.resolution_x, r.resolution_y, r.resolution_percentage]
    r.resolution_x = 800
    update()
    out["resolution_after_edit"] = [r.resolution_x, r.resolution_y, r.resolution_percentage]

    # 11. EXR: a linear float file reconstructs; a linear float datablock uploads as sRGB
    out["exr"] = call("reconstruct", filepath=cfg["exr_photo"])
    monkey = bpy.data.images.load(cfg["photo"], check_existing=False)
    srgb = top_down_pixels(monkey)
    bpy.data.images.remove(monkey)
    linear_img = bpy.data.images.new("linear photo", W, H, alpha=True, float_buffer=True)
    rgb = srgb[..., :3]
    lin = np.concatenate([np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4), srgb[..., 3:]], 2)
    linear_img.pixels.foreach_set(lin[::-1].astype(np.float32).ravel())
    out["linear_datablock"] = {"colorspace": linear_img.colorspace_settings.name, "is_float": linear_img.is_float}
    try:
        upload, _ = operators.prepare_inputs(bpy.context, image=linear_img.name)
        out["linear_datablock"]["upload"] = upload.image.hex()
    except Exception as exc:  # the bug of issue #16: an AttributeError here
        out["linear_datablock"]["error"] = f"{type(exc).__name__}: {exc}"

    # 12. a remote GPU box: the URL `cupid serve --host 0.0.0.0` printed and its token file's token
    prefs.backend_kind, prefs.remote_url, prefs.remote_token = "REMOTE", cfg["remote_url"], cfg["remote_token"]
    out["remote"] = call("reconstruct", filepath=cfg["photo"], steps=1)
    out["remote_stop"] = call("stop_backend")
    out["remote_panel"] = labels(draw_panel(name, False))
    prefs.backend_kind = "LOCAL"
    # back on the local backend: the remote service's report is forgotten until the local one answers
    out["local_again_panel"] = labels(draw_panel(name, False))
    out["local_again_start"] = call("start_backend")

    # 13. the model, device and precision the panel shows; after `cupid download` the official weights
    wm = bpy.context.window_manager
    out["model"] = {"tiny_panel": labels(draw_panel(name, False)), "tiny_config": operators.backend_config(
        bpy.context).model}
    hub = os.environ["HF_HUB_CACHE"]
    os.environ["HF_HUB_CACHE"] = cfg["fake_hub"]   # `cupid download` has filled the Hugging Face cache
    out["model"]["downloaded_config"] = operators.backend_config(bpy.context).model
    out["model"]["downloaded_panel"] = labels(draw_panel(name, False))
    os.environ["HF_HUB_CACHE"] = hub
    tiny = prefs.model
    reported = (wm.cupid_device, wm.cupid_dtype)
    prefs.model = cfg["full_model"]   # another backend: what the running one reported no longer holds
    out["model"]["forgotten"] = {"before": reported, "after": (wm.cupid_device, wm.cupid_dtype)}
    out["model"]["full_cpu_panel"] = labels(draw_panel(name, False))
    prefs.device = "cuda"
    out["model"]["full_cuda_panel"] = labels(draw_panel(name, False))
    wm.cupid_dtype = "float32"                          # as if a backend had answered
    prefs.dtype = "bfloat16"                            # a precision asked for, before the backend answered
    out["model"]["asked_panel"] = labels(draw_panel(name, False))
    out["model"]["asked_config"] = operators.backend_config(bpy.context).dtype
    prefs.model, prefs.device, prefs.dtype = tiny, "cpu", "auto"

    # 14. results beside the saved .blend, else the preference's folder
    out["results_folder"] = {"saved": str(operators.results_folder(bpy.context))}
    prefs.results_beside_blend, prefs.results_dir = False, cfg["results_dir"]
    out["results_folder"]["preference"] = str(operators.results_folder(bpy.context))
    prefs.results_beside_blend, prefs.results_dir = True, ""

    # 15. every control of the panel and the preferences explains itself
    settings = bpy.context.scene.cupid.bl_rna.properties
    out["tooltips"] = {p.identifier: p.description for p in settings if p.identifier not in ("rna_type", "name")}
    out["pref_tooltips"] = {p.identifier: p.description for p in prefs.bl_rna.properties
                            if p.identifier not in ("rna_type", "bl_idname")}
    out["op_tooltips"] = {op: getattr(bpy.ops.cupid, op).get_rna_type().description for op in (
        "reconstruct", "reconstruct_batch", "cancel", "start_backend", "stop_backend", "set_active_camera",
        "import_bundle", "refine", "pick_objects", "clear_picks", "segment", "show_cutout")}
    out["panel_props"] = sorted({e[1][1] for e in out["panel_idle"] if e[0] in ("prop", "template_ID",
                                                                                "template_ID_preview")})

    # 16. Stop Backend says "stopped"
    out["stop"] = call("stop_backend")
    out["stopped_panel"] = labels(draw_panel(name, False))
    addon_utils.disable(name, default_set=True)   # unregister stops the backend it started
    out["backend_running_after_disable"] = operators.MANAGER.running()
    return out


if __name__ == "__main__":
    run_driver(main)
