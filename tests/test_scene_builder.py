"""Scene building from a result bundle (bpy 4.5 headless): collection, meshes, material, camera,
all-or-nothing on failure, and per-camera render resolution for photos of different aspect."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = pytest.mark.blender

from cupid.export import ExportOptions, write_bundle  # noqa: E402
from helpers.bundles import obj as ObjectSpec  # noqa: E402
from helpers.bundles import reconstruction  # noqa: E402
from cupid_blender import scene_builder as sb  # noqa: E402


def _icosphere(subdiv: int = 1) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=0.4)
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int32)


def _camera(width: int, height: int) -> dict:
    f = 1.2 * max(width, height)
    K = np.array([[f, 0, width / 2 + 7], [0, f * 1.0, height / 2 - 5], [0, 0, 1]], float)
    # looking at the origin from -Y (Blender front view), x right, image y down = world -z
    R = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    t = np.array([0.1, 0.05, 3.0])
    return {"K": K, "R": R, "t": t, "width": width, "height": height}


def _bundle(tmp: Path, width: int, height: int, n_objects: int = 2, texture: bool = True) -> Path:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    objs = []
    for k in range(n_objects):
        v, f = _icosphere(1)
        cols = np.clip(0.5 + 0.5 * v / 0.4, 0, 1).astype(np.float32)
        c, s = np.cos(0.3 * k), np.sin(0.3 * k)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        objs.append(ObjectSpec(f"object_{k}", v, f, cols, transform=(0.5 + 0.2 * k, R, [0.6 * k - 0.3, 0, 0])))
    return write_bundle(reconstruction(photo, _camera(width, height), objs), tmp,
                        ExportOptions(target_faces=None, texture=texture, texture_size=128, glb=False,
                                      gaussians=False, overlay=False))


def _counts() -> dict:
    return {k: len(getattr(bpy.data, k)) for k in
            ("objects", "meshes", "materials", "images", "cameras", "collections")}


@pytest.fixture(autouse=True)
def _empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def test_build_collection_objects_material_camera(tmp_path):
    root = _bundle(tmp_path / "b", 320, 240)
    scene = bpy.context.scene
    res = sb.build_from_bundle(root, scene, name="kitchen")
    coll = res.collection
    assert coll.name == "CUPID kitchen" and coll.name in scene.collection.children
    assert {o.name for o in coll.objects} == {"kitchen camera", "kitchen object_0", "kitchen object_1"}
    assert scene.camera == res.camera and res.camera.type == "CAMERA"
    assert (scene.render.resolution_x, scene.render.resolution_y) == (320, 240)
    assert list(res.camera[sb.RESOLUTION_PROP]) == [320, 240]
    bg = res.camera.data.background_images[0]
    assert res.camera.data.show_background_images and tuple(bg.image.size) == (320, 240)
    assert bg.image.packed_file is not None

    data = sb.read_bundle(root)
    for obj, od in zip(res.objects, data.objects):
        me = obj.data
        assert len(me.vertices) == len(od.vertices) and len(me.polygons) == len(od.faces)
        co = np.empty(3 * len(me.vertices), np.float32)
        me.vertices.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(-1, 3), od.vertices, atol=1e-6)
        corners = np.empty(3 * len(me.polygons), np.int32)
        me.polygons.foreach_get("vertices", corners)
        np.testing.assert_array_equal(corners.reshape(-1, 3), od.faces)
        uv = np.empty(2 * len(me.loops), np.float32)
        me.uv_layers["UVMap"].data.foreach_get("uv", uv)
        np.testing.assert_allclose(uv.reshape(-1, 2), od.uv[od.faces.ravel()], atol=1e-6)
        np.testing.assert_allclose(np.array(obj.matrix_world), od.matrix_world, atol=1e-5)
        mat = me.materials[0]
        tex = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
        assert len(tex) == 1 and tex[0].image.packed_file is not None
        assert tex[0].outputs["Color"].links[0].to_node.type == "BSDF_PRINCIPLED"
        assert me.color_attributes.get("Color") is not None

    # a world point projects to the same pixel through K,R,t and through the Blender camera
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    K, R, t = data.K, data.R, data.t
    for p in ([0.1, 0.2, -0.1], [-0.3, 0.0, 0.25]):
        xc = R @ np.array(p) + t
        px = (K @ xc)[:2] / xc[2]
        ndc = world_to_camera_view(scene, res.camera, Vector(p))
        blender_px = np.array([ndc.x * 320, (1 - ndc.y) * 240])
        np.testing.assert_allclose(blender_px, px, atol=1e-3)


def test_vertex_colour_fallback_without_texture(tmp_path):
    root = _bundle(tmp_path / "b", 200, 100, n_objects=1, texture=False)
    res = sb.build_from_bundle(root, bpy.context.scene)
    me = res.objects[0].data
    nodes = me.materials[0].node_tree.nodes
    assert not [n for n in nodes if n.type == "TEX_IMAGE"]
    vc = [n for n in nodes if n.type == "VERTEX_COLOR"]
    assert vc and vc[0].layer_name == "Color"
    col = np.empty(4 * len(me.vertices), np.float32)
    me.color_attributes["Color"].data.foreach_get("color", col)
    expected = np.load(root / "object_0.npz")["colors"]
    np.testing.assert_allclose(col.reshape(-1, 4)[:, :3], expected, atol=1e-6)


def test_failure_midway_leaves_scene_unchanged(tmp_path):
    root = _bundle(tmp_path / "b", 320, 240)
    scene = bpy.context.scene
    # an existing camera and resolution that must survive the failed build
    cam0 = bpy.data.objects.new("mine", bpy.data.cameras.new("mine"))
    scene.collection.objects.link(cam0)
    scene.camera = cam0
    scene.render.resolution_x, scene.render.resolution_y = 1000, 700
    before = _counts()
    # the second object's texture is garbage: detected only while building it
    (root / "object_1.png").write_bytes(b"not a png at all")
    with pytest.raises(sb.SceneBuildError, match="object_1"):
        sb.build_from_bundle(root, scene)
    assert _counts() == before
    assert scene.camera == cam0
    assert (scene.render.resolution_x, scene.render.resolution_y) == (1000, 700)
    assert not [c for c in bpy.data.collections if c.name.startswith("CUPID")]


@pytest.mark.parametrize("breakage", ["no_scene", "bad_json", "missing_mesh", "bad_faces"])
def test_bad_bundle_is_refused_before_building(tmp_path, breakage):
    root = _bundle(tmp_path / "b", 64, 48, n_objects=1)
    if breakage == "no_scene":
        (root / "scene.json").unlink()
    elif breakage == "bad_json":
        (root / "scene.json").write_text("{not json")
    elif breakage == "missing_mesh":
        (root / "object_0.npz").unlink()
    else:
        z = dict(np.load(root / "object_0.npz"))
        z["faces"] = z["faces"] + 10_000
        np.savez(root / "object_0.npz", **z)
    before = _counts()
    with pytest.raises(sb.SceneBuildError):
        sb.build_from_bundle(root, bpy.context.scene)
    assert _counts() == before


def test_two_photos_of_different_aspect(tmp_path):
    scene = bpy.context.scene
    a = sb.build_from_bundle(_bundle(tmp_path / "a", 320, 240, n_objects=1), scene, name="wide")
    lens_a, fit_a, shift_a = a.camera.data.lens, a.camera.data.sensor_fit, a.camera.data.shift_x
    b = sb.build_from_bundle(_bundle(tmp_path / "b", 150, 300, n_objects=1), scene, name="tall")
    assert scene.camera == b.camera
    assert (scene.render.resolution_x, scene.render.resolution_y) == (150, 300)
    # the first camera is untouched and gets its own resolution back when it is made active
    assert (a.camera.data.lens, a.camera.data.sensor_fit, a.camera.data.shift_x) == (lens_a, fit_a, shift_a)
    scene.camera = a.camera
    assert sb.sync_render_resolution(scene) is True
    assert (scene.render.resolution_x, scene.render.resolution_y) == (320, 240)
    assert sb.sync_render_resolution(scene) is False  # idempotent: safe inside a handler
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    data = sb.read_bundle(tmp_path / "a")
    p = np.array([0.05, -0.1, 0.2])
    xc = data.R @ p + data.t
    px = (data.K @ xc)[:2] / xc[2]
    ndc = world_to_camera_view(scene, a.camera, Vector(p))
    np.testing.assert_allclose([ndc.x * 320, (1 - ndc.y) * 240], px, atol=1e-3)


def _gaussian_bundle(tmp: Path, n: int = 300) -> Path:
    from cupid.export.ply import GaussianArrays

    rng = np.random.default_rng(1)
    v, f = _icosphere(1)
    q = rng.normal(size=(n, 4))
    g = GaussianArrays(rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32),
                       rng.uniform(0.01, 0.05, (n, 3)).astype(np.float32),
                       rng.uniform(0.1, 0.9, (n, 1)).astype(np.float32),
                       (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
                       rng.normal(size=(n, 1, 3)).astype(np.float32))
    photo = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    spec = ObjectSpec("object_0", v, f, np.full_like(v, 0.5), transform=(0.7, np.eye(3), [0.1, 0, 0]), gaussians=g)
    return write_bundle(reconstruction(photo, _camera(64, 48), [spec]), tmp,
                        ExportOptions(target_faces=None, texture=False, glb=False, gaussians=True, overlay=False))


def test_gaussians_become_a_point_cloud_with_named_attributes(tmp_path):
    from cupid.export.ply import read_gaussians_ply

    root = _gaussian_bundle(tmp_path / "g")
    res = sb.build_from_bundle(root, bpy.context.scene, name="splats")
    assert [o.name for o in res.gaussians] == ["splats object_0 gaussians"]
    pc = res.gaussians[0]
    g = read_gaussians_ply(root / "object_0.ply")
    assert pc.type == "POINTCLOUD" and len(pc.data.points) == len(g) and pc.users_collection[0] == res.collection
    assert pc.hide_render and pc.hide_get()
    np.testing.assert_allclose(np.array(pc.matrix_world), np.array(res.objects[0].matrix_world), atol=1e-6)
    for name, key, want in (("opacity", "value", g.opacity[:, 0]), ("scale", "vector", g.scaling),
                            ("rotation", "value", g.rotation)):
        buf = np.empty(want.size, np.float32)
        pc.data.attributes[name].data.foreach_get(key, buf)
        np.testing.assert_allclose(buf.reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    assert pc.data.attributes["color"].data_type == "FLOAT_COLOR"
    assert not bpy.data.meshes.get("splats object_0 gaussians")   # the conversion left no mesh behind


def test_a_broken_gaussian_file_changes_nothing(tmp_path):
    root = _gaussian_bundle(tmp_path / "g")
    (root / "object_0.ply").write_bytes((root / "object_0.ply").read_bytes()[:-500])
    before = {**_counts(), "pointclouds": len(bpy.data.pointclouds)}
    with pytest.raises(sb.SceneBuildError, match="gaussians.*truncated"):
        sb.build_from_bundle(root, bpy.context.scene)
    assert {**_counts(), "pointclouds": len(bpy.data.pointclouds)} == before


def test_render_size_is_set_when_the_camera_changes_and_then_left_alone(tmp_path):
    scene = bpy.context.scene
    r = scene.render
    a = sb.build_from_bundle(_bundle(tmp_path / "a", 320, 240, n_objects=1), scene, name="wide")
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1000, 700, 50   # the artist's choice
    assert sb.sync_render_resolution(scene) is False
    assert (r.resolution_x, r.resolution_y, r.resolution_percentage) == (1000, 700, 50)
    sb.build_from_bundle(_bundle(tmp_path / "b", 150, 300, n_objects=1), scene, name="tall")
    assert (r.resolution_x, r.resolution_y, r.resolution_percentage) == (150, 300, 50)
    scene.camera = a.camera
    assert sb.sync_render_resolution(scene) is True
    assert (r.resolution_x, r.resolution_y, r.resolution_percentage) == (320, 240, 50)
    r.resolution_x = 111
    assert sb.sync_render_resolution(scene) is False and r.resolution_x == 111
    assert sb.sync_render_resolution(scene, force=True) is True and r.resolution_x == 320


def test_a_rerun_gets_one_suffix_for_every_name(tmp_path):
    root = _bundle(tmp_path / "b", 64, 48, n_objects=1)
    sb.build_from_bundle(root, bpy.context.scene, name="kitchen")
    again = sb.build_from_bundle(root, bpy.context.scene, name="kitchen")
    assert again.collection.name == "CUPID kitchen.001" and again.camera.name == "kitchen camera.001"
    assert again.camera.data.background_images[0].image.name == "kitchen photo.001"
    assert [o.name for o in again.objects] == ["kitchen object_0.001"]
    assert sb.build_from_bundle(root, bpy.context.scene).collection.name == "CUPID b"   # named after its folder


def test_the_camera_clips_to_its_objects_near_and_far(tmp_path):
    """A point map can put objects 10⁸ m away or 5 cm from the camera: the camera's clip range holds
    every object (Blender's default 0.1-1000 m would render nothing)."""
    v, f = _icosphere(1)
    photo = np.zeros((60, 80, 3), np.uint8)
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    cam = (K, np.eye(3), np.zeros(3), 80, 60)
    for depth, radius in ((9e7, 1e6), (0.05, 0.01)):
        far = ObjectSpec("object_0", v, f, transform=(radius / 0.4, np.eye(3), [0.0, 0.0, depth]))
        d = write_bundle(reconstruction(photo, cam, [far]), tmp_path / f"b{depth}",
                         ExportOptions(target_faces=None, texture=False, glb=False, gaussians=False, overlay=False))
        res = sb.build_from_bundle(d, bpy.context.scene)
        cd = res.camera.data
        assert cd.clip_start < depth - radius and cd.clip_end > depth + radius, (depth, cd.clip_start, cd.clip_end)
        assert cd.clip_start > 0 and cd.clip_end / cd.clip_start < 1e7   # depth precision kept


def _photo_textured_bundle(tmp: Path) -> Path:
    """One sphere whose mask is its silhouette: the export projects the photo onto it."""
    from cupid.export import render_silhouette

    W, H = 160, 120
    cam = _camera(W, H)
    v, f = _icosphere(2)
    spec = ObjectSpec("object_0", v, f, np.clip(0.5 + v, 0, 1).astype(np.float32))
    spec.mask = render_silhouette(v, f, cam["K"], cam["R"], cam["t"], W, H).astype(np.float32)
    photo = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return write_bundle(reconstruction(photo, cam, [spec]), tmp,
                        ExportOptions(target_faces=None, texture_size=128, glb=False, gaussians=False, overlay=False))


def test_a_photo_texture_mixes_generated_and_photo_by_the_results_factor(tmp_path):
    from cupid_blender.results import PHOTO_MIX_NODE, photo_mix_nodes, set_photo_texture

    root = _photo_textured_bundle(tmp_path / "b")
    data = sb.read_bundle(root)
    od = data.objects[0]
    assert od.texture_generated.name == "object_0_generated.png" and od.photo_weight.name == "object_0_photo_weight.png"
    res = sb.build_from_bundle(root, bpy.context.scene, name="ball")
    mat = res.objects[0].data.materials[0]
    mix = mat.node_tree.nodes[PHOTO_MIX_NODE]
    assert photo_mix_nodes(res.collection) == [mix] and mix.inputs[0].default_value == 1.0
    a, b = (next(s for s in mix.inputs if s.identifier == k).links[0].from_node.image for k in ("A_Color", "B_Color"))
    assert (a.name, b.name) == ("ball object_0 generated", "ball object_0 texture")
    assert b.colorspace_settings.name == "sRGB" and a.colorspace_settings.name == "sRGB"
    weight = next(n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.label == "Photo Weight")
    assert weight.colorspace_settings.name == "Non-Color" and weight.packed_file is not None
    out = next(s for s in mix.outputs if s.identifier == "Result_Color")
    assert out.links[0].to_node.type == "BSDF_PRINCIPLED"
    set_photo_texture(res.collection, 0.3)
    assert mix.inputs[0].default_value == pytest.approx(0.3)
    # removing the result removes all three images
    from cupid_blender.results import remove_result
    n_images = len(bpy.data.images)
    remove_result(res.collection)
    assert len(bpy.data.images) == n_images - 4   # photo, texture, generated, weight


def test_a_bundle_without_the_photo_texture_builds_one_texture(tmp_path):
    root = _bundle(tmp_path / "b", 200, 100, n_objects=1)
    assert sb.read_bundle(root).objects[0].texture_generated is None
    res = sb.build_from_bundle(root, bpy.context.scene)
    nodes = res.objects[0].data.materials[0].node_tree.nodes
    assert not [n for n in nodes if n.type == "MIX"] and len([n for n in nodes if n.type == "TEX_IMAGE"]) == 1


def test_the_photo_texture_factor_follows_the_slider_and_survives_a_refine(tmp_path):
    from cupid_blender import properties
    from cupid_blender.results import PHOTO_MIX_NODE

    bpy.types.Collection.cupid_photo_texture = bpy.props.FloatProperty(
        default=1.0, min=0.0, max=1.0, update=properties._photo_texture_changed)
    try:
        res = sb.build_from_bundle(_photo_textured_bundle(tmp_path / "a"), bpy.context.scene, name="ball")
        coll = res.collection
        coll.cupid_photo_texture = 0.4
        node = res.objects[0].data.materials[0].node_tree.nodes[PHOTO_MIX_NODE]
        assert node.inputs[0].default_value == pytest.approx(0.4)
        again = sb.build_from_bundle(_photo_textured_bundle(tmp_path / "b"), bpy.context.scene, replace=coll)
        assert again.collection == coll
        new_node = again.objects[0].data.materials[0].node_tree.nodes[PHOTO_MIX_NODE]
        assert new_node.inputs[0].default_value == pytest.approx(0.4)   # the artist's factor stays
    finally:
        del bpy.types.Collection.cupid_photo_texture
