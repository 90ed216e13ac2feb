"""*Composite over Photo* in headless Blender (bpy 4.5): a tiny-model result built with the composite
set-up renders (Cycles, few samples) into its own photo.

Away from the objects and their shadows the composited render must equal the photo (PSNR >= 40 dB: the
film is transparent, the photo passes through the Standard view transform untouched); the ground plane
must catch shadows; the objects must land inside their masks, and match the backend's own silhouette of
the bundle (the camera in the upright world). Removing the result takes the set-up away again, and a
compositor tree of the artist's own is left alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from cupid.export import load_bundle, render_silhouette  # noqa: E402
from cupid.pipeline import CupidPipeline  # noqa: E402
from cupid_blender import composite, scene_builder  # noqa: E402
from cupid_blender.results import remove_result  # noqa: E402
from helpers.bundles import reconstruct_to  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MONKEY = REPO / "examples" / "monkey.png"


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"), np.float64)


@pytest.fixture(scope="module")
def bundle(tiny_model, tmp_path_factory) -> dict:
    """An opaque photo (the monkey on a table top) with its mask, reconstructed in object mode."""
    tmp = tmp_path_factory.mktemp("composite")
    rgba = Image.open(MONKEY).convert("RGBA")
    photo = Image.new("RGB", rgba.size, (205, 196, 180))
    rng = np.random.default_rng(0)   # a textured table, so that a shifted or rescaled photo would show
    noise = rng.integers(-25, 25, (rgba.size[1], rgba.size[0], 1))
    photo = Image.fromarray(np.clip(np.asarray(photo, np.int32) + noise, 0, 255).astype(np.uint8))
    photo.paste(rgba, mask=rgba.getchannel("A"))
    photo.save(tmp / "table.png")
    mask = np.asarray(rgba.getchannel("A")) > 127
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp / "mask.png")
    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu")
    out = reconstruct_to(pipe, tmp / "table.png", tmp / "table", mask=tmp / "mask.png", seed=0)
    return {"dir": out, "mask": mask, "tmp": tmp}


def _render(scene, path: Path) -> np.ndarray:
    scene.render.filepath = str(path)
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    bpy.ops.render.render(write_still=True)
    return _read(path)


def test_a_composited_render_is_the_photo_with_the_objects_and_their_shadows(bundle):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    res = scene_builder.build_from_bundle(bundle["dir"], scene, composite=True)
    b = load_bundle(bundle["dir"])
    assert b.scene["up"]["source"] == "objects" and b.scene["units"] == "relative"
    grounds = [o for o in res.collection.objects if o.get(composite.GROUND_PROP)]
    suns = [o for o in res.collection.objects if o.type == "LIGHT"]
    assert len(grounds) == 1 and grounds[0].is_shadow_catcher and len(suns) == 1 and suns[0].data.type == "SUN"
    assert scene.render.engine == "CYCLES" and scene.render.film_transparent
    assert scene.use_nodes and composite.OVER_NODE in scene.node_tree.nodes
    scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.device = 8, False, "CPU"
    scene.cycles.use_adaptive_sampling = False
    tmp = bundle["tmp"]
    composited = _render(scene, tmp / "composited.png")
    photo = _read(b.path(b.scene["image"]["file"]))
    H, W = photo.shape[:2]
    assert composited.shape == (H, W, 4)

    # what the render itself holds: the objects and the shadows the ground catches (no compositing)
    scene.render.use_compositing = False
    raw = _render(scene, tmp / "raw.png")
    grounds[0].hide_render = True
    objects_only = _render(scene, tmp / "objects.png")
    grounds[0].hide_render = False
    scene.render.use_compositing = True
    obj_alpha = objects_only[..., 3] > 127
    touched = raw[..., 3] > 0.5
    shadow = touched & ~(objects_only[..., 3] > 0)
    assert shadow.sum() > 50, "the ground plane catches the objects' shadow"
    from scipy.ndimage import binary_dilation

    away = ~binary_dilation(touched, iterations=2)
    assert away.mean() > 0.5
    mse = ((composited[..., :3] - photo[..., :3])[away] ** 2).mean()
    psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))
    print(f"PSNR away from the objects and shadows: {psnr:.1f} dB over {away.sum()} pixels")
    assert psnr >= 40.0, psnr
    # where the shadow falls the photo is darkened, not replaced
    assert (composited[..., :3].sum(-1) < photo[..., :3].sum(-1) - 3)[shadow].mean() > 0.5

    # the objects land inside their masks (the tiny model's crude shape overshoots it a little), exactly
    # where the backend's camera puts them
    inside = (obj_alpha & binary_dilation(bundle["mask"], iterations=3)).sum() / obj_alpha.sum()
    print(f"share of the object inside its mask: {inside:.3f}")
    assert obj_alpha.sum() > 500 and inside > 0.75, inside
    cam = b.camera()
    expected = np.zeros((H, W), bool)
    for o in b.objects:
        m = b.load_mesh(o["name"])
        M = np.array(o["matrix_world"])
        expected |= render_silhouette(m["vertices"] @ M[:3, :3].T + M[:3, 3], m["faces"], cam.K, cam.R, cam.t, W, H)
    iou = (obj_alpha & expected).sum() / (obj_alpha | expected).sum()
    assert iou >= 0.95, iou


def test_the_set_up_goes_with_the_result_and_leaves_the_artists_compositor_alone(bundle):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_EEVEE_NEXT"
    scene.view_settings.view_transform = "AgX"
    res = scene_builder.build_from_bundle(bundle["dir"], scene, composite=True)
    assert scene.render.engine == "CYCLES" and scene.view_settings.view_transform == "Standard"
    remove_result(res.collection)
    composite.remove_composite_if_unused(scene)
    assert scene.render.engine == "BLENDER_EEVEE_NEXT" and not scene.render.film_transparent
    assert scene.view_settings.view_transform == "AgX" and not scene.use_nodes
    assert not [n for n in (scene.node_tree.nodes if scene.node_tree else []) if n.name.startswith("CUPID")]
    assert not bpy.data.lights and composite.STATE_PROP not in scene

    # the artist's own compositor: a Glare node between the render and the output stays as it is
    scene.use_nodes = True
    tree = scene.node_tree
    glare = tree.nodes.new("CompositorNodeGlare")
    before = sorted(n.name for n in tree.nodes)
    res = scene_builder.build_from_bundle(bundle["dir"], scene, composite=True)
    assert sorted(n.name for n in tree.nodes) == before and glare.name in tree.nodes
    assert any("compositor" in note for note in res.notes)
    # without the option nothing scene-wide changes and no ground or sun is added
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    res = scene_builder.build_from_bundle(bundle["dir"], scene, composite=False)
    assert scene.render.engine != "CYCLES" and not scene.use_nodes
    assert not [o for o in res.collection.objects if o.type == "LIGHT" or o.get(composite.GROUND_PROP)]
