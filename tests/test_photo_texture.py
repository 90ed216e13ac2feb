"""The photo on the object: the export projects the photo's own pixels onto the texels its camera sees.

Synthetic scenes with a known colour on every surface point are photographed through a known camera
(tests/helpers/photos.py); the bundle's texture, re-rendered through that camera, must give the photo
back; the hidden side keeps the (colour-transferred) generated colour exactly; an object hidden behind
another never takes its pixels; a white-balance shift of the generated colours is removed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from cupid.export import ExportOptions, load_bundle, write_bundle
from cupid.export.color_transfer import ColorTransfer, fit_color_transfer
from cupid.export.photo_texture import photo_view, texture_size
from cupid.export.raster import render_textured
from cupid.export.texels import texel_map
from cupid.geometry import CameraPose, Similarity
from cupid.reconstruction import ReconstructedObject, Reconstruction
from helpers.meshes import box, suzanne
from helpers.photos import checker_background, psnr, shoot, srgb_to_lab, wave_field, white_balance

W, H = 640, 480
K = np.array([[640.0, 0.0, 316.0], [0.0, 640.0, 242.0], [0.0, 0.0, 1.0]])
OPTS = ExportOptions(target_faces=None, texture_size=256, max_texture_size=1024, gaussians=False)
IDENTITY = Similarity(1.0, np.eye(3), np.zeros(3))


def look_at(centre, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV (R, t) of a camera at `centre` looking at `target`, image up along `up`."""
    c = np.asarray(centre, float)
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ c


def camera(centre=(0.9, -1.8, 0.6)) -> CameraPose:
    R, t = look_at(centre)
    return CameraPose(K, R, t, W, H)


def _images(root: Path, obj: dict, *keys: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(root / obj[k])) for k in keys]


def _rerender(bundle, keys=("texture",)) -> tuple[list[np.ndarray], np.ndarray]:
    """Each object of the bundle with the texture `key`, all through the bundle's camera."""
    cam = bundle.camera()
    out, ids = [], None
    for key in keys:
        meshes = []
        for k, obj in enumerate(bundle.objects):
            m = bundle.load_mesh(k)
            M = np.asarray(obj["matrix_world"])
            meshes.append((m["vertices"] @ M[:3, :3].T + M[:3, 3], m["faces"], m["uv"],
                           np.asarray(Image.open(bundle.path(obj[key])))))
        img, ids = render_textured(meshes, cam.K, cam.R, cam.t, cam.width, cam.height)
        out.append(img)
    return out, ids


@pytest.fixture(scope="module")
def suzanne_bundle(tmp_path_factory):
    """Suzanne painted with colour waves, photographed over a loud checker; the generated colours are
    her vertex colours with a white-balance shift."""
    v, f = suzanne()
    field = wave_field(0.3, seed=1)
    cam = camera()
    photo, ids = shoot([(v, f, IDENTITY, field)], cam, checker_background(W, H))
    mask = (ids == 0).astype(np.float32)
    obj = ReconstructedObject("suzanne", v, f, white_balance(field(v)), mask=mask)
    out = write_bundle(Reconstruction(photo, cam, [obj]), tmp_path_factory.mktemp("pt") / "b", OPTS)
    return load_bundle(out), photo, mask, field


def test_rerender_reproduces_the_photo(suzanne_bundle):
    bundle, photo, mask, _ = suzanne_bundle
    (final, generated), ids = _rerender(bundle, ("texture", "texture_generated"))
    inside = mask > 0.5
    assert (ids[inside] == 0).all()
    assert psnr(final, photo / 255.0, inside) >= 35.0
    assert psnr(generated, photo / 255.0, inside) < 30.0   # the photo, not the generated colours, did it


def test_unseen_texels_keep_the_transferred_generated_colour_exactly(suzanne_bundle):
    bundle, _, _, _ = suzanne_bundle
    obj = bundle.objects[0]
    final, generated, weight = _images(bundle.root, obj, "texture", "texture_generated", "photo_weight")
    m = bundle.load_mesh(0)
    size = obj["texture_size"]
    assert final.shape == generated.shape == (size, size, 3) and weight.shape == (size, size)
    texels = texel_map(m["uv"], m["faces"], size)
    covered = texels.covered()
    unseen = covered & (weight == 0)
    assert unseen.sum() > 0.3 * covered.sum()          # the back of the head
    assert np.array_equal(final[unseen], generated[unseen])
    # ... and texture_generated is the baked vertex colours through the recorded colour transfer
    ct = obj["photo_texture"]["color_transfer"]
    transfer = ColorTransfer(np.asarray(ct["matrix"]), np.asarray(ct["offset"]), ct["samples"])
    expect = np.clip(np.round(transfer.apply(texels.interpolate(m["colors"], m["faces"])) * 255), 0, 255)
    assert np.array_equal(texels.gather(generated), expect.astype(np.uint8))
    assert ct["samples"] > 1000 and not np.allclose(ct["matrix"], np.eye(3), atol=0.05)
    assert np.allclose(ct["matrix"], np.diag(np.diag(ct["matrix"]))) and ct["offset"] == [0.0, 0.0, 0.0]


def test_nothing_of_the_background_bleeds_in(suzanne_bundle, tmp_path):
    """The same Suzanne photographed over black instead of the loud checker gives the very same
    textures: not one background pixel reaches a texel."""
    bundle, _, mask, field = suzanne_bundle
    v, f = suzanne()
    cam = camera()
    photo, _ = shoot([(v, f, IDENTITY, field)], cam)
    obj = ReconstructedObject("suzanne", v, f, white_balance(field(v)), mask=mask)
    other = load_bundle(write_bundle(Reconstruction(photo, cam, [obj]), tmp_path / "black", OPTS))
    for key in ("texture", "texture_generated", "photo_weight"):
        a, b = _images(bundle.root, bundle.objects[0], key)[0], _images(other.root, other.objects[0], key)[0]
        assert np.array_equal(a, b), key


def test_bundle_fields_and_sizes(suzanne_bundle):
    bundle, photo, mask, _ = suzanne_bundle
    obj = bundle.objects[0]
    scene = bundle.scene
    assert scene["export"] == {"photo_texture": True, "texture_size": 256, "max_texture_size": 1024}
    pt = obj["photo_texture"]
    assert pt["texels_per_pixel"] >= 1.0 and obj["texture_size"] % 128 == 0
    assert 256 <= obj["texture_size"] <= 1024
    stored_mask = np.asarray(Image.open(bundle.path(obj["mask"])))
    assert stored_mask.shape == photo.shape[:2] and np.array_equal(stored_mask > 127, mask > 0.5)
    # the GLB and the NPZ carry the final texture
    import trimesh
    glb = trimesh.load(bundle.path(obj["glb"]), force="mesh")
    texture = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(texture, np.asarray(Image.open(bundle.path(obj["texture"]))))


def test_the_hidden_part_of_an_object_takes_none_of_its_occluders_pixels(tmp_path):
    """A blue ball in front of a yellow board. The board's mask is its whole outline (amodal, so the
    mask cannot help): only the z-buffer over both objects keeps the ball's blue off the board."""
    bv, bf = box([-0.5, -0.05, -0.4], [0.5, 0.05, 0.4])
    import trimesh
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.22)
    board_field = lambda p: np.tile([0.9, 0.8, 0.2], (len(p), 1)) + 0.05 * np.sin(10 * p[:, :1])  # noqa: E731
    ball_field = lambda p: np.tile([0.1, 0.2, 0.95], (len(p), 1))  # noqa: E731
    ball_at = Similarity(1.0, np.eye(3), np.array([0.1, -0.45, 0.05]))
    cam = camera((0.3, -2.2, 0.3))
    # the board subdivided so its vertex colours carry the field
    board = trimesh.Trimesh(bv, bf, process=False).subdivide_to_size(0.05)
    objs = [(board.vertices, board.faces, IDENTITY, board_field), (ball.vertices, ball.faces, ball_at, ball_field)]
    photo, ids = shoot(objs, cam)
    board_amodal = shoot(objs[:1], cam)[1] == 0
    assert (board_amodal & (ids == 1)).sum() > 500        # the ball really hides part of the board
    recon = Reconstruction(photo, cam, [
        ReconstructedObject("board", board.vertices, board.faces, board_field(board.vertices) * 0.9,
                            mask=board_amodal.astype(np.float32)),
        ReconstructedObject("ball", ball.vertices, ball.faces, ball_field(ball.vertices), placement=ball_at,
                            mask=(ids == 1).astype(np.float32))], mode="scene")
    bundle = load_bundle(write_bundle(recon, tmp_path / "b", OPTS))
    obj = bundle.objects[0]
    final, generated, weight = _images(bundle.root, obj, "texture", "texture_generated", "photo_weight")
    m = bundle.load_mesh(0)
    texels = texel_map(m["uv"], m["faces"], obj["texture_size"])
    # texels of the board's front whose surface point the ball hides in the photo
    pts = texels.interpolate(m["vertices"], m["faces"]).astype(np.float64)
    cam_pts = pts @ cam.R.T + cam.t
    px = cam_pts @ cam.K.T
    col, row = (px[:, 0] / px[:, 2]).astype(int), (px[:, 1] / px[:, 2]).astype(int)
    front = pts[:, 1] < -0.049
    hidden = front & (ids[np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)] == 1)
    import cv2
    inner = cv2.distanceTransform((ids == 0).astype(np.uint8), cv2.DIST_L2, 5) > 8   # 8 px inside what shows the board
    shown = front & inner[np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)]
    assert hidden.sum() > 1000 and shown.sum() > 1000
    assert (texels.gather(weight)[hidden] == 0).all()
    assert np.array_equal(texels.gather(final)[hidden], texels.gather(generated)[hidden])
    blue = texels.gather(final).astype(int)
    assert (blue[hidden, 2] - blue[hidden, 0] < 0).all()   # yellow stays yellow: no blue at all
    assert (texels.gather(weight)[shown] == 255).mean() > 0.95  # the part the photo shows takes the photo
    # the ball itself, in front, takes its own pixels
    (final_img,), rids = _rerender(bundle)
    inside = rids == 1
    assert psnr(final_img, photo / 255.0, inside) > 35.0


@pytest.fixture(scope="module")
def smooth_bundle(tmp_path_factory):
    """Suzanne in slowly changing colours (so both sides of the visibility boundary are alike in
    truth); her generated colours have a white-balance shift (red up 30 %, blue down 25 %)."""
    v, f = suzanne()
    field = wave_field(1.5, seed=3, amplitude=0.25)
    cam = camera()
    photo, ids = shoot([(v, f, IDENTITY, field)], cam, checker_background(W, H))
    obj = ReconstructedObject("suzanne", v, f, white_balance(field(v)), mask=(ids == 0).astype(np.float32))
    out = write_bundle(Reconstruction(photo, cam, [obj]), tmp_path_factory.mktemp("wb") / "b", OPTS)
    return load_bundle(out), field


def test_a_white_balance_shift_is_removed_at_the_visibility_boundary(smooth_bundle):
    """Across the line where the photo stops seeing the surface, the final texture's two sides agree
    in mean colour (< 3 ΔE); with the generated colours' shifted white balance they would not."""
    bundle, field = smooth_bundle
    obj = bundle.objects[0]
    final, weight = _images(bundle.root, obj, "texture", "photo_weight")
    m = bundle.load_mesh(0)
    texels = texel_map(m["uv"], m["faces"], obj["texture_size"])
    pts = texels.interpolate(m["vertices"], m["faces"]).astype(np.float64)
    w = texels.gather(weight)
    seen, unseen = np.flatnonzero(w == 255), np.flatnonzero(w == 0)
    # each unseen texel near the boundary against the nearest fully seen one (within a band wider
    # than the weight's ramp)
    dist, nearest = cKDTree(pts[seen]).query(pts[unseen], distance_upper_bound=0.06)
    b = unseen[dist < np.inf]
    a = seen[nearest[dist < np.inf]]
    assert len(b) > 1000

    def delta_e(colours: np.ndarray) -> float:
        return float(np.linalg.norm((srgb_to_lab(colours[a]) - srgb_to_lab(colours[b])).mean(axis=0)))

    truth = field(pts)
    untransferred = truth.copy()
    untransferred[b] = white_balance(truth[b])
    assert delta_e(truth) < 1.5                       # the two sides are alike in truth
    assert delta_e(untransferred) > 10.0              # the shift the transfer has to remove
    assert delta_e(texels.gather(final) / 255.0) < 3.0
    gains = np.diag(np.asarray(obj["photo_texture"]["color_transfer"]["matrix"]))
    assert np.allclose(gains, [1 / 1.3, 1.0, 1 / 0.75], rtol=0.05)


def test_colour_transfer_recovers_white_balance_and_exposure_and_keeps_the_pattern():
    from cupid.export.color_transfer import linear_to_srgb, srgb_to_linear

    rng = np.random.default_rng(0)
    src = rng.uniform(0.05, 0.85, (5000, 3))
    gains = np.array([0.8, 1.1, 1.3])
    dst = linear_to_srgb(srgb_to_linear(src) * gains)          # a white-balance and exposure shift
    t = fit_color_transfer(src, dst)
    assert np.allclose(np.diag(t.matrix), gains, rtol=0.01) and np.allclose(t.offset, 0)
    assert np.abs(t.apply(src) - dst).max() < 0.01
    # a plain seen side (one photo colour) against busy generated colours: the mean moves, the
    # generated pattern stays (a least-squares colour matrix would flatten it to the mean)
    plain = fit_color_transfer(src, np.tile([0.55, 0.45, 0.4], (5000, 1)))
    moved = plain.apply(src)
    assert np.allclose(srgb_to_linear(moved).mean(0), srgb_to_linear(np.array([0.55, 0.45, 0.4])), rtol=0.02)
    assert (srgb_to_linear(moved).std(0) > 0.5 * srgb_to_linear(src).std(0) * np.diag(plain.matrix)).all()
    assert fit_color_transfer(src[:3], dst[:3]).samples == 0   # too few: the identity
    assert np.diag(fit_color_transfer(src, np.zeros_like(src)).matrix).min() == 0.25   # at most two stops


def test_texture_size_gives_a_texel_per_pixel_up_to_the_cap():
    size, tpp = texture_size(seen_px=200_000, seen_uv=0.25, base=256, largest=4096)
    assert size % 128 == 0 and tpp >= 1.0 and 256 <= size <= 4096
    assert texture_size(50, 0.25, 1024, 4096)[0] == 1024                # never below the base size
    size, tpp = texture_size(50_000_000, 0.25, 1024, 4096)
    assert size == 4096 and tpp < 1.0                                    # capped: as many as allowed
    assert texture_size(0, 0.0, 512, 4096) == (512, 0.0)


def test_the_depth_buffer_is_capped_but_visibility_holds():
    """The z-buffer is at most DEPTH_MAX_SIDE pixels wide (a 4000 px photo: 2048), and a capped one
    says which object each part of the photo shows as the full-size one does."""
    R, t = look_at((0.3, -2.2, 0.3))
    big = CameraPose(K * np.array([[6.25], [6.25], [1.0]]), R, t, 4000, 3000)
    view = photo_view(np.zeros((3000, 4000, 3), np.uint8), big, [])
    assert view.ids.shape == (1536, 2048) and view.scale == pytest.approx(4000 / 2048)
    cam = CameraPose(K * np.array([[2.5], [2.5], [1.0]]), R, t, 1600, 1200)
    v, f = suzanne()
    bv, bf = box([-0.6, 0.3, -0.5], [0.6, 0.4, 0.5])
    meshes = [(v @ R.T + t, f), (bv @ R.T + t, bf)]
    photo = np.zeros((1200, 1600, 3), np.uint8)
    capped, full = photo_view(photo, cam, meshes, max_side=800), photo_view(photo, cam, meshes, max_side=1600)
    assert capped.ids.shape == (600, 800) and capped.scale == 2.0 and full.scale == 1.0
    same = full.ids[1::2, 1::2] == capped.ids
    assert same.mean() > 0.99 and (capped.ids == 0).sum() > 40_000 and (capped.ids == 1).sum() > 40_000


def test_no_photo_texture_and_objects_without_a_mask(tmp_path, suzanne_bundle):
    bundle, photo, mask, field = suzanne_bundle
    v, f = suzanne()
    cam = camera()
    objs = [ReconstructedObject("a", v, f, field(v), mask=mask), ReconstructedObject("b", v, f, field(v))]
    off = load_bundle(write_bundle(Reconstruction(photo, cam, objs), tmp_path / "off",
                                   ExportOptions(**{**OPTS.__dict__, "photo_texture": False})))
    for obj in off.objects:
        assert "texture_generated" not in obj and "photo_weight" not in obj and obj["texture_size"] == 256
    assert "mask" in off.objects[0] and "mask" not in off.objects[1]
    assert off.scene["export"]["photo_texture"] is False
    on = load_bundle(write_bundle(Reconstruction(photo, cam, objs), tmp_path / "on", OPTS))
    assert "photo_weight" in on.objects[0] and "photo_weight" not in on.objects[1]   # no mask: no photo


def test_photo_texture_is_deterministic(tmp_path, suzanne_bundle):
    bundle, photo, mask, field = suzanne_bundle
    v, f = suzanne()
    rec = lambda: Reconstruction(photo, camera(), [ReconstructedObject(  # noqa: E731
        "suzanne", v, f, white_balance(field(v)), mask=mask)])
    a, b = write_bundle(rec(), tmp_path / "a", OPTS), write_bundle(rec(), tmp_path / "b", OPTS)
    for name in sorted(p.name for p in a.iterdir()):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("size", [8, 20000, 300.5])
def test_bad_texture_sizes_are_refused(tmp_path, suzanne_bundle, size):
    from cupid.errors import InputError

    bundle, photo, mask, field = suzanne_bundle
    v, f = suzanne()
    with pytest.raises(InputError, match="max_texture_size"):
        write_bundle(Reconstruction(photo, camera(), [ReconstructedObject("s", v, f, mask=mask)]), tmp_path / "x",
                     ExportOptions(**{**OPTS.__dict__, "max_texture_size": size}))


def test_textures_of_different_sizes_are_a_broken_bundle(tmp_path, suzanne_bundle):
    import shutil

    from cupid.export import BundleError

    bundle, _, _, _ = suzanne_bundle
    broken = tmp_path / "broken"
    shutil.copytree(bundle.root, broken)
    obj = bundle.objects[0]
    Image.new("L", (64, 64)).save(broken / obj["photo_weight"])
    with pytest.raises(BundleError, match="differ in size"):
        load_bundle(broken)
    scene = json.loads((bundle.root / "scene.json").read_text())
    assert set(scene["objects"][0]) >= {"texture", "texture_generated", "photo_weight", "mask", "texture_size",
                                        "photo_texture"}


# ---------------------------------------------------------------------------------------------
# the whole way: the tiny model on a real photo, through the CLI, and a refine
# ---------------------------------------------------------------------------------------------

def _cupid(*args: str) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo / 'backend'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cupid", *args], capture_output=True, text=True, timeout=600, env=env)


def _interior(ids: np.ndarray, mask: np.ndarray, k: int = 0, margin: int = 5) -> np.ndarray:
    """Pixels at least `margin` pixels inside both the object's coverage and its mask."""
    import cv2

    both = ((ids == k) & (mask > 127)).astype(np.uint8)
    return cv2.distanceTransform(both, cv2.DIST_L2, 5) > margin


@pytest.fixture(scope="module")
def cat_photo(tmp_path_factory) -> Path:
    """A real opaque JPEG (scikit-image's Chelsea the cat, 451 × 300): the remover cuts her out."""
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


def test_the_cli_bundle_reproduces_the_photo_where_the_object_is_seen(tiny_model, cat_photo, tmp_path):
    r = _cupid("reconstruct", str(cat_photo), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
               "--steps", "2", "--device", "cpu", "--seed", "1")
    assert r.returncode == 0, r.stderr
    bundle = load_bundle(tmp_path / "out")
    obj = bundle.objects[0]
    assert bundle.scene["export"] == {"photo_texture": True, "texture_size": 256, "max_texture_size": 4096}
    photo = np.asarray(Image.open(bundle.path(bundle.scene["image"]["file"]))) / 255.0
    (final, generated), ids = _rerender(bundle, ("texture", "texture_generated"))
    inside = _interior(ids, np.asarray(Image.open(bundle.path(obj["mask"]))))
    assert inside.sum() > 3000
    ours, theirs = psnr(final, photo, inside), psnr(generated, photo, inside)
    assert ours >= 30.0 and ours - theirs >= 5.0, (ours, theirs)
    assert obj["photo_texture"]["texels_per_pixel"] >= 1.0


def test_cli_photo_texture_flags(tiny_model, cat_photo, tmp_path):
    r = _cupid("reconstruct", str(cat_photo), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
               "--steps", "1", "--device", "cpu", "--no-photo-texture", "--max-texture-size", "512")
    assert r.returncode == 0, r.stderr
    scene = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert scene["export"] == {"photo_texture": False, "texture_size": 256, "max_texture_size": 512}
    assert "texture_generated" not in scene["objects"][0] and scene["objects"][0]["texture_size"] == 256
    r = _cupid("reconstruct", str(cat_photo), "-o", str(tmp_path / "bad"), "--model", str(tiny_model),
               "--max-texture-size", "100000")
    assert r.returncode != 0 and "--max-texture-size must be" in r.stderr and "Traceback" not in r.stderr
    assert "loading model" not in r.stdout      # refused before the model loads


def test_a_refine_projects_the_photo_through_the_moved_camera(tiny_model, cat_photo, tmp_path):
    from cupid.geometry import rodrigues
    from cupid.pipeline import CupidPipeline
    from cupid.preprocess import preprocess
    from cupid.run import refine_bundle

    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu")
    first = pipe.stage_one(preprocess(cat_photo, remover=pipe.remover), seed=1, steps=2)
    c = first.camera
    K = c.K.copy()
    K[:2, :2] *= 1.08
    moved = CameraPose(K, rodrigues(np.radians([0.0, 4.0, 0.0])) @ c.R, c.t, c.width, c.height)
    bundle = load_bundle(refine_bundle(pipe, first, moved, tmp_path / "r", steps=2))
    obj = bundle.objects[0]
    np.testing.assert_allclose(bundle.camera().K, moved.K, atol=1e-9)
    photo = np.asarray(Image.open(bundle.path(bundle.scene["image"]["file"]))) / 255.0
    (final,), ids = _rerender(bundle)
    inside = _interior(ids, np.asarray(Image.open(bundle.path(obj["mask"]))))
    assert inside.sum() > 2000 and psnr(final, photo, inside) >= 30.0


def test_an_already_textured_mesh_keeps_its_size_and_gets_the_photo(suzanne_bundle, tmp_path):
    """A mesh handed over with its own uv and texture: the photo goes onto that texture, at its size."""
    from cupid.export.mesh import TexturedMesh, postprocess_mesh

    bundle, photo, mask, field = suzanne_bundle
    v, f = suzanne()
    tm = postprocess_mesh(v, f, white_balance(field(v)), target_faces=None, texture_size=320)
    given = TexturedMesh(tm.vertices, tm.faces, tm.colors, tm.uv, tm.texture)
    obj = ReconstructedObject("suzanne", v, f, textured=given, mask=mask)
    out = load_bundle(write_bundle(Reconstruction(photo, camera(), [obj]), tmp_path / "b", OPTS))
    entry = out.objects[0]
    final, generated, weight = _images(out.root, entry, "texture", "texture_generated", "photo_weight")
    assert entry["texture_size"] == 320 and final.shape == (320, 320, 3)
    texels = texel_map(tm.uv, tm.faces, 320)
    ct = entry["photo_texture"]["color_transfer"]
    transfer = ColorTransfer(np.asarray(ct["matrix"]), np.asarray(ct["offset"]), ct["samples"])
    expect = np.clip(np.round(transfer.apply(texels.gather(tm.texture) / 255.0) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(texels.gather(generated), expect)
    (img,), _ = _rerender(out)
    assert psnr(img, photo / 255.0, mask > 0.5) >= 33.0 and (weight > 0).sum() > 10_000
