"""The README's picture of the preview-and-refine loop, rendered headlessly with the tiny model:

    python tests/blender_scripts/steer_picture.py docs/preview_refine.png

builds the extension zip with the tiny model, starts a clean headless Blender running this file as a
driver (the installed add-on, the real `cupid serve`), and there: reconstructs examples/monkey.png,
renders stage 1's voxels through the preview camera the moment they appear, renders the result, moves
and re-lenses the camera, refines, renders again, and puts the three over the dimmed photo side by side.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PHOTO = REPO / "examples" / "monkey.png"
PANEL_W = 360            # each panel's width in the picture
CAPTIONS = ("1  stage 1: camera and voxels", "2  the result", "3  refined from the moved camera")


def _render(bpy, path: Path) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


def _light(bpy) -> None:
    scene = bpy.context.scene
    world = bpy.data.worlds.new("studio")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs[1].default_value = 0.8
    scene.world = world
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 2.5
    sun.rotation_euler = (0.7, 0.2, 0.9)
    scene.collection.objects.link(sun)


def driver(cfg: dict) -> dict:
    import bpy
    from mathutils import Vector

    sys.path.insert(0, str(HERE))
    from common import install

    name, prefs = install(cfg["zip"], cfg["python"])
    operators = sys.modules[name + ".operators"]
    prefs.results_dir = cfg["results_dir"]
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    _light(bpy)
    out_dir = Path(cfg["out_dir"])
    build_preview = operators.build_preview

    def rendering_build_preview(*args):
        built = build_preview(*args)
        _render(bpy, out_dir / "1_preview.png")
        return built

    operators.build_preview = rendering_build_preview
    assert bpy.ops.cupid.reconstruct(filepath=str(PHOTO), steps=cfg["steps"]) == {"FINISHED"}
    _render(bpy, out_dir / "2_result.png")
    coll = bpy.data.collections["CUPID monkey"]
    cam = next(o for o in coll.objects if o.type == "CAMERA")
    cam.location = cam.location + Vector((0.35, 0.15, 0.1))
    direction = Vector((0.0, 0.0, 0.0)) - cam.location
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    cam.data.lens *= 0.9
    bpy.context.view_layer.update()
    assert bpy.ops.cupid.refine(collection=coll.name) == {"FINISHED"}
    _render(bpy, out_dir / "3_refined.png")
    operators.MANAGER.stop()
    return {"renders": sorted(p.name for p in out_dir.glob("*.png"))}


def compose(out_dir: Path, target: Path) -> None:
    """The three renders over the dimmed photo, side by side, captioned."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont

    photo = Image.open(PHOTO).convert("RGBA")
    backdrop = Image.new("RGBA", photo.size, (235, 235, 235, 255))
    backdrop.alpha_composite(photo)
    backdrop = ImageEnhance.Brightness(backdrop).enhance(0.75)
    h = round(PANEL_W * photo.height / photo.width)
    sheet = Image.new("RGB", (3 * PANEL_W + 2 * 6, h + 26), (255, 255, 255))
    font = ImageFont.load_default(size=15)
    draw = ImageDraw.Draw(sheet)
    for k, (render, caption) in enumerate(zip(("1_preview.png", "2_result.png", "3_refined.png"), CAPTIONS)):
        panel = backdrop.copy()
        panel.alpha_composite(Image.open(out_dir / render).convert("RGBA").resize(photo.size))
        x = k * (PANEL_W + 6)
        sheet.paste(panel.convert("RGB").resize((PANEL_W, h), Image.Resampling.LANCZOS), (x, 0))
        draw.text((x + 4, h + 4), caption, fill=(30, 30, 30), font=font)
    sheet = sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    sheet.save(target, optimize=True)


def main() -> None:
    if sys.argv[1].endswith(".json"):   # the driver, inside Blender
        sys.path.insert(0, str(HERE))
        from common import run_driver

        run_driver(driver)
        return
    import tempfile

    sys.path.insert(0, str(REPO))
    from tests.blender_scripts import launch

    target = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="cupid-picture-") as tmp:
        tmp = Path(tmp)
        _, zip_path = launch.tiny_zip(tmp)
        cfg = {"zip": str(zip_path), "python": sys.executable, "results_dir": str(tmp / "results"),
               "out_dir": str(tmp / "renders"), "result": str(tmp / "result.json"), "steps": 0}
        (tmp / "renders").mkdir()
        print(json.dumps(launch.run(Path(__file__).resolve(), cfg, tmp, timeout=900)))
        compose(tmp / "renders", target)
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
