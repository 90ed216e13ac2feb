"""Result bundle: write -> load -> schema valid, determinism, and clear errors for broken bundles."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from cupid.errors import CupidError, InputError
from cupid.export import SCHEMA_PATH, BundleError, ExportOptions, load_bundle, read_gaussians_ply, render_silhouette, write_bundle
from helpers.bundles import obj as ObjectSpec
from helpers.bundles import reconstruction

W, H = 200, 150
K = np.array([[180.0, 0.0, 101.0], [0.0, 180.0, 74.0], [0.0, 0.0, 1.0]])
R_CAM = trimesh.transformations.rotation_matrix(np.radians(20), [1, 0, 0])[:3, :3]
T_CAM = np.array([0.0, 0.1, 2.5])
OPTS = ExportOptions(target_faces=600, texture_size=128, chart_iterations=0)


class _Gaussians:
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(3)
        self.xyz = torch.rand(n, 3, generator=g) - 0.5
        self.scaling = torch.full((n, 3), 0.01)
        self.opacity = torch.full((n, 1), 0.7)
        self.rotation = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
        self.features_dc = torch.randn(n, 1, 3, generator=g)


def _photo() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _objects():
    a = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    b = trimesh.creation.box(extents=(0.4, 0.3, 0.5))
    Rb = trimesh.transformations.rotation_matrix(np.radians(30), [0, 0, 1])[:3, :3]
    return [
        ObjectSpec("object_0", a.vertices, a.faces, np.clip(a.vertices + 0.5, 0, 1), gaussians=_Gaussians(),
                   transform=(1.0, np.eye(3), np.array([-0.35, 0.0, 0.0]))),
        ObjectSpec("object_1", b.vertices, b.faces, None,
                   transform=(0.8, Rb, np.array([0.45, 0.05, 0.2]))),
    ]


def _write(out: Path) -> Path:
    return write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, W, H), _objects()), out, OPTS)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("bundle") / "b")


def test_write_then_load_is_schema_valid(bundle_dir):
    scene = json.loads((bundle_dir / "scene.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(scene)
    b = load_bundle(bundle_dir)
    assert b.scene == scene and scene["schema"] == "cupid.scene/1"
    assert scene["image"] == {"file": "input.png", "width": W, "height": H}
    assert np.allclose(scene["camera"]["K"], K) and np.allclose(scene["camera"]["R"], R_CAM)
    assert [o["name"] for o in b.objects] == ["object_0", "object_1"]
    o0, o1 = b.objects
    assert {"mesh", "texture", "glb", "gaussians"} <= set(o0) and "gaussians" not in o1
    M = np.array(o1["matrix_world"])
    Rb = np.array(o1["transform"]["R"])
    assert np.allclose(M[:3, :3], 0.8 * Rb) and np.allclose(M[:3, 3], [0.45, 0.05, 0.2])
    assert np.allclose(M[3], [0, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(Image.open(bundle_dir / "input.png")), np.asarray(_photo()))


def test_mesh_npz_layout(bundle_dir):
    b = load_bundle(bundle_dir)
    for obj in b.objects:
        m = b.load_mesh(obj["name"])
        assert m["vertices"].dtype == np.float32 and m["faces"].dtype == np.int32
        assert m["uv"].dtype == np.float32 and m["colors"].dtype == np.float32
        assert m["uv"].shape == (len(m["vertices"]), 2) and m["colors"].shape == (len(m["vertices"]), 3)
        assert obj["counts"]["vertices"] == len(m["vertices"]) and obj["counts"]["faces"] == len(m["faces"])
        assert np.allclose(obj["bounds"]["min"], m["vertices"].min(0))
        assert np.all(np.abs(m["vertices"]) <= 0.5)          # still the object frame
        tex = np.asarray(Image.open(bundle_dir / obj["texture"]))
        assert tex.shape == (128, 128, 3)
    assert b.objects[0]["counts"]["gaussians"] == 64
    g = read_gaussians_ply(bundle_dir / b.objects[0]["gaussians"])
    assert np.allclose(g.opacity, 0.7, atol=1e-6)


def test_overlay_is_drawn_where_the_objects_project(bundle_dir):
    b = load_bundle(bundle_dir)
    cam = b.camera()
    Kb, Rb, tb, w, h = cam.K, cam.R, cam.t, cam.width, cam.height
    photo = np.asarray(Image.open(bundle_dir / "input.png")).astype(int)
    overlay = np.asarray(Image.open(bundle_dir / "overlay.png")).astype(int)
    sil = np.zeros((h, w), bool)
    for obj in b.objects:
        m = b.load_mesh(obj["name"])
        M = np.array(obj["matrix_world"])
        world = m["vertices"] @ M[:3, :3].T + M[:3, 3]
        sil |= render_silhouette(world, m["faces"], Kb, Rb, tb, w, h)
    changed = np.any(overlay != photo, axis=2)
    assert sil.sum() > 2000
    assert changed[sil].mean() > 0.97
    import cv2
    band = cv2.dilate(sil.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert not changed[~band].any()


def test_bundle_is_deterministic(bundle_dir, tmp_path):
    again = _write(tmp_path / "again")
    for name in sorted(p.name for p in bundle_dir.iterdir()):
        assert (again / name).read_bytes() == (bundle_dir / name).read_bytes(), name


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


def _edit(d: Path, fn) -> None:
    scene = json.loads((d / "scene.json").read_text())
    fn(scene)
    (d / "scene.json").write_text(json.dumps(scene))


def test_missing_file_is_a_clear_error(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    (d / "object_1.glb").unlink()
    with pytest.raises(CupidError, match=r"object 'object_1' glb file 'object_1.glb' is missing") as ei:
        load_bundle(d)
    assert isinstance(ei.value, BundleError) and ei.value.code == "bad_bundle"


def test_no_scene_json(tmp_path):
    with pytest.raises(BundleError, match="scene.json not found"):
        load_bundle(tmp_path)
    (tmp_path / "scene.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("camera"), r"at \(top level\): 'camera' is a required property"),
    (lambda s: s.update(schema="cupid.scene/2"), r"at schema"),
    (lambda s: s["objects"][0].update(mesh="../../etc/passwd"), r"at objects/0/mesh"),
    (lambda s: s["objects"][1]["transform"].update(scale=-1), r"at objects/1/transform/scale"),
    (lambda s: s["camera"]["K"].pop(), r"at camera/K"),
])
def test_schema_violations_are_reported_with_their_location(bundle_dir, tmp_path, edit, message):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(d)


def test_inconsistent_bundles_are_rejected(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, lambda s: s["objects"][1]["matrix_world"][0].__setitem__(3, 9.0))
    with pytest.raises(BundleError, match="matrix_world does not match"):
        load_bundle(d)
    d2 = tmp_path / "dup"
    shutil.copytree(bundle_dir, d2)
    _edit(d2, lambda s: s["objects"][1].update(name="object_0"))
    with pytest.raises(BundleError, match="not unique"):
        load_bundle(d2)
    d3 = tmp_path / "badmesh"
    shutil.copytree(bundle_dir, d3)
    np.savez(d3 / "object_0.npz", vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 2]], np.int32))
    with pytest.raises(BundleError, match="vertices must be float32"):
        load_bundle(d3)
    d4 = tmp_path / "size"
    shutil.copytree(bundle_dir, d4)
    _edit(d4, lambda s: s["image"].update(width=W + 1))
    with pytest.raises(BundleError, match=f"photo is {W}x{H} but scene.json says {W + 1}x{H}"):
        load_bundle(d4)


def test_bad_inputs_to_the_writer(tmp_path):
    objs = _objects()
    with pytest.raises(InputError, match="camera is for a 100x150 image"):
        write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, 100, H), objs), tmp_path / "a", OPTS)
    with pytest.raises(InputError, match="object name"):
        write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, W, H),
                                    [ObjectSpec("../evil", objs[0].vertices, objs[0].faces)]), tmp_path / "b", OPTS)
    with pytest.raises(InputError, match="unique"):
        write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, W, H), [objs[1], objs[1]]), tmp_path / "c", OPTS)
    bad = ObjectSpec("x", objs[0].vertices, objs[0].faces, transform=(1.0, 2 * np.eye(3), np.zeros(3)))
    with pytest.raises(InputError, match="not a rotation"):
        write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, W, H), [bad]), tmp_path / "d", OPTS)


def test_camera_as_mapping_or_object_and_options(tmp_path):
    cam = {"K": K, "R": R_CAM, "t": T_CAM, "width": W, "height": H}
    obj = _objects()[1]
    calls = []
    d = write_bundle(reconstruction(np.asarray(_photo()), cam, [obj]), tmp_path / "m",
                     ExportOptions(target_faces=None, texture=False, glb=False),
                     progress=lambda stage, f: calls.append((stage, f)))
    assert calls[-1] == ("export", 1.0) and all(a[1] <= b[1] for a, b in zip(calls, calls[1:]))
    b = load_bundle(d / "scene.json")
    o = b.objects[0]
    assert set(o) >= {"mesh"} and not {"texture", "glb", "gaussians"} & set(o)
    m = b.load_mesh(0)
    assert "uv" not in m and len(m["faces"]) == 12   # the cleaned box, not simplified

    class Pose:
        def __init__(self):
            self.K, self.R, self.t, self.width, self.height = K, R_CAM, T_CAM, W, H
    d2 = write_bundle(reconstruction(_photo(), Pose(), [obj]), tmp_path / "p", ExportOptions(target_faces=None, texture=False, glb=False))
    assert (d2 / "scene.json").read_bytes() == (d / "scene.json").read_bytes()


def test_bundle_from_reference_decoder_outputs(tmp_path):
    """Real FlexiCubes and Gaussian decoder outputs (reference fixtures, random weights: messy,
    non-manifold meshes) go through the whole export."""
    from safetensors.numpy import load_file

    from conftest import PARITY

    mesh_io = PARITY / "slat_dec_mesh.io.safetensors"
    gs_io = PARITY / "slat_dec_gs.io.safetensors"
    if not mesh_io.is_file() or not gs_io.is_file():
        pytest.fail(f"reference fixtures not found under {PARITY} (set CUPID_SHARED)")
    m = load_file(str(mesh_io))
    g = load_file(str(gs_io))

    class G:
        xyz, scaling, opacity = g["gs0_xyz"], g["gs0_scaling"], g["gs0_opacity"]
        rotation, features_dc = g["gs0_rotation"], g["gs0_features_dc"]

    spec = ObjectSpec("object_0", m["mesh0_vertices"], m["mesh0_faces"], m["mesh0_vertex_attrs"][:, :3],
                      gaussians=G())
    d = write_bundle(reconstruction(_photo(), (K, R_CAM, T_CAM, W, H), [spec]), tmp_path / "ref",
                     ExportOptions(target_faces=4000, texture_size=256, chart_iterations=0))
    b = load_bundle(d)
    mesh = b.load_mesh(0)
    assert 0 < len(mesh["faces"]) <= 4000
    lo, hi = m["mesh0_vertices"].min(0), m["mesh0_vertices"].max(0)
    assert np.all(mesh["vertices"].min(0) >= lo - 1e-3) and np.all(mesh["vertices"].max(0) <= hi + 1e-3)
    c = m["mesh0_vertex_attrs"][:, :3]
    assert mesh["colors"].min() >= c.min() - 1e-6 and mesh["colors"].max() <= c.max() + 1e-6
    back = read_gaussians_ply(d / "object_0.ply")
    assert np.allclose(back.xyz, g["gs0_xyz"], atol=1e-7)
    assert np.allclose(back.scaling, g["gs0_scaling"], rtol=1e-5)
    assert np.allclose(back.opacity, g["gs0_opacity"], atol=1e-5)
    assert np.allclose(back.features_dc, g["gs0_features_dc"], atol=1e-7)


def test_an_already_textured_mesh_is_written_as_it_is(tmp_path):
    """ReconstructedObject.textured skips simplification, unwrapping and baking (huge or pre-made meshes)."""
    from cupid.export.mesh import TexturedMesh

    rng = np.random.default_rng(3)
    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    v, f = np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int32)
    tm = TexturedMesh(v, f, rng.random((len(v), 3)).astype(np.float32),
                      rng.random((len(v), 2)).astype(np.float32), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    cam = {"K": K, "R": R_CAM, "t": T_CAM, "width": W, "height": H}
    d = write_bundle(reconstruction(_photo(), cam, [ObjectSpec("made", v, f, tm.colors, textured=tm)]), tmp_path / "t",
                     ExportOptions(target_faces=4, gaussians=False))  # target_faces ignored for it
    m = load_bundle(d).load_mesh(0)
    for key in ("vertices", "faces", "colors", "uv"):
        np.testing.assert_array_equal(m[key], getattr(tm, key))
    np.testing.assert_array_equal(np.asarray(Image.open(d / "made.png")), tm.texture)
