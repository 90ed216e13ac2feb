"""Mesh post-processing (clean, simplify, UVs, baked texture), GLB (trimesh and Blender's
importer) and the 3DGS PLY round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from plyfile import PlyData

from cupid.errors import InputError
from cupid.export import (clean_mesh, from_gltf_axes, mesh_to_glb_bytes, postprocess_mesh,
                          read_gaussians_ply, sample_texture, simplify_mesh, to_gltf_axes,
                          write_gaussians_ply, write_glb)
from cupid.export.raster import rasterize


def _colour_of(points: np.ndarray) -> np.ndarray:
    """A smooth colour field over the object cube (so texels and vertices can be compared)."""
    p = np.asarray(points, dtype=np.float64)
    return np.clip(np.stack([p[:, 0] + 0.5, 0.5 + 0.8 * p[:, 1] * p[:, 2] + 0.3 * p[:, 2],
                             0.5 + 0.45 * np.sin(3 * p[:, 0] + 2 * p[:, 1])], 1), 0, 1)


def _ellipsoid(subdiv=4):
    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=1.0)
    v = np.asarray(m.vertices) * [0.45, 0.3, 0.4]
    return v, np.asarray(m.faces)


@pytest.fixture(scope="module")
def textured():
    v, f = _ellipsoid(5)  # 20480 faces
    return v, f, postprocess_mesh(v, f, _colour_of(v), target_faces=3000, texture_size=512)


def test_clean_merges_duplicates_and_drops_degenerate_faces():
    v, f = _ellipsoid(2)
    soup_v = v[f].reshape(-1, 3)                       # every face has its own 3 vertices
    soup_f = np.arange(len(soup_v)).reshape(-1, 3)
    extra_f = np.array([[0, 0, 1], [0, 1, 2], [2, 1, 0]])  # repeated index, duplicate, flipped duplicate
    cv, cf, cc = clean_mesh(soup_v, np.concatenate([soup_f, extra_f]), _colour_of(soup_v))
    assert len(cv) == len(v) and len(cf) == len(f)
    assert np.allclose(np.sort(cv, axis=0), np.sort(v, axis=0))
    assert np.allclose(cc, _colour_of(cv), atol=1e-12)  # colours travelled with their vertices


def test_clean_rejects_bad_input():
    v, f = _ellipsoid(1)
    with pytest.raises(InputError):
        clean_mesh(v, f + len(v))
    with pytest.raises(InputError):
        clean_mesh(v[:, :2], f)
    with pytest.raises(InputError):
        clean_mesh(np.full_like(v, np.nan), f)
    with pytest.raises(InputError):
        clean_mesh(v, f, np.zeros((3, 3)))


def test_simplify_keeps_shape_and_colours():
    v, f = _ellipsoid(5)
    c = _colour_of(v)
    sv, sf, sc = simplify_mesh(v, f, c, target_faces=2000)
    assert 1800 <= len(sf) <= 2000
    # vertices stay on the ellipsoid: implicit function within 2 %
    r = np.sqrt(((sv / [0.45, 0.3, 0.4]) ** 2).sum(1))
    assert np.abs(r - 1).max() < 0.02
    before = trimesh.Trimesh(v, f, process=False)
    after = trimesh.Trimesh(sv, sf, process=False)
    assert after.is_watertight
    assert abs(after.volume / before.volume - 1) < 0.01
    assert np.allclose(after.bounds, before.bounds, atol=0.01)
    assert np.abs(sc - _colour_of(sv)).max() < 0.05   # nearest-vertex colour transfer


def test_uvs_cover_unit_square_without_overlap(textured):
    _, _, tm = textured
    assert tm.uv.dtype == np.float32 and tm.uv.shape == (len(tm.vertices), 2)
    assert tm.uv.min() >= 0.0 and tm.uv.max() <= 1.0
    assert tm.texture.shape == (512, 512, 3) and tm.texture.dtype == np.uint8
    uvf = tm.uv[tm.faces].astype(np.float64)
    area = np.cross(uvf[:, 1] - uvf[:, 0], uvf[:, 2] - uvf[:, 0]) / 2
    assert (np.abs(area) > 0).all()
    # no two faces share texels: the summed UV area equals the rasterised coverage
    s = 2048
    frags = rasterize(np.stack([tm.uv[:, 0] * s, (1 - tm.uv[:, 1]) * s], 1), tm.faces, s, s)
    assert abs(frags.mask.mean() / np.abs(area).sum() - 1) < 0.03


def test_texture_matches_vertex_colours(textured):
    v0, _, tm = textured
    rng = np.random.default_rng(0)
    fi = rng.integers(0, len(tm.faces), 4000)
    b = rng.dirichlet([1, 1, 1], len(fi))
    tri = tm.faces[fi]
    uv = np.einsum("nk,nkc->nc", b, tm.uv[tri].astype(np.float64))
    col = np.einsum("nk,nkc->nc", b, tm.colors[tri].astype(np.float64))
    tex = sample_texture(tm.texture, uv)
    err = np.abs(tex - col)
    assert err.mean() < 2.0 / 255
    assert np.quantile(err.max(1), 0.99) < 8.0 / 255
    # at the vertices themselves (chart borders included, thanks to seam dilation)
    vert_err = np.abs(sample_texture(tm.texture, tm.uv) - tm.colors)
    assert np.quantile(vert_err.max(1), 0.99) < 8.0 / 255


def test_gltf_axes_are_a_proper_rotation():
    p = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(to_gltf_axes(p), [[1.0, 3.0, -2.0]])
    assert np.allclose(from_gltf_axes(to_gltf_axes(p)), p)


def test_glb_loads_in_trimesh_with_texture(textured, tmp_path):
    _, _, tm = textured
    path = write_glb(tmp_path / "obj.glb", tm.vertices, tm.faces, tm.uv, tm.texture, name="chair")
    scene = trimesh.load(path, process=False)
    assert list(scene.geometry) == ["chair"]
    g = scene.geometry["chair"]
    assert len(g.vertices) == len(tm.vertices) and len(g.faces) == len(tm.faces)
    assert np.allclose(from_gltf_axes(g.vertices), tm.vertices, atol=1e-6)
    assert g.visual.kind == "texture"
    assert np.allclose(g.visual.uv, tm.uv, atol=1e-6)
    img = np.asarray(g.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(img, tm.texture)
    # the same bytes for the same input
    assert mesh_to_glb_bytes(tm.vertices, tm.faces, tm.uv, tm.texture, name="chair") == path.read_bytes()


def test_glb_with_vertex_colours_only(tmp_path):
    v, f = _ellipsoid(1)
    path = write_glb(tmp_path / "c.glb", v, f, colors=_colour_of(v))
    g = list(trimesh.load(path, process=False).geometry.values())[0]
    assert g.visual.kind == "vertex"
    assert np.abs(g.visual.vertex_colors[:, :3] / 255.0 - _colour_of(v)).max() < 1 / 255 + 1e-6


@pytest.mark.blender
def test_glb_imports_in_blender_in_object_frame(textured, tmp_path):
    bpy = pytest.importorskip("bpy", reason="Blender as a Python module (bpy) is not installed")
    _, _, tm = textured
    path = write_glb(tmp_path / "obj.glb", tm.vertices, tm.faces, tm.uv, tm.texture, name="chair")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    assert len(meshes) == 1
    obj = meshes[0]
    me = obj.data
    assert len(me.vertices) == len(tm.vertices) and len(me.polygons) == len(tm.faces)
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    M = np.array(obj.matrix_world)
    world = co.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
    # Blender's importer undoes (x, z, -y): the object comes back Z-up, in the object frame
    assert np.allclose(world.min(0), tm.vertices.min(0), atol=1e-5)
    assert np.allclose(world.max(0), tm.vertices.max(0), atol=1e-5)
    # uv convention survives (v up in both): compare per loop
    loop_v = np.empty(len(me.loops), dtype=np.int64)
    me.loops.foreach_get("vertex_index", loop_v)
    luv = np.empty(len(me.loops) * 2)
    me.uv_layers.active.data.foreach_get("uv", luv)
    assert np.allclose(luv.reshape(-1, 2), tm.uv[loop_v], atol=1e-5)
    mat = obj.active_material
    assert any(n.type == "TEX_IMAGE" and n.image is not None and tuple(n.image.size) == (512, 512)
               for n in mat.node_tree.nodes)
    bpy.ops.wm.read_factory_settings(use_empty=True)


class _TorchGaussians:
    """A minimal object with the activated getters (torch), like cupid.representations.gaussian."""

    def __init__(self, n=500, rest=0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.xyz = torch.rand(n, 3, generator=g) - 0.5
        self.scaling = torch.rand(n, 3, generator=g) * 0.02 + 1e-4
        self.opacity = torch.rand(n, 1, generator=g) * 0.98 + 0.01
        q = torch.randn(n, 4, generator=g)
        self.rotation = q / q.norm(dim=1, keepdim=True)
        self.features_dc = torch.randn(n, 1, 3, generator=g)
        if rest:
            self.features_rest = torch.randn(n, rest, 3, generator=g)


@pytest.mark.parametrize("rest", [0, 3])
def test_gaussian_ply_round_trip(tmp_path, rest):
    g = _TorchGaussians(rest=rest)
    path = write_gaussians_ply(tmp_path / "g.ply", g)
    ply = PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    expect = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{i}" for i in range(3 * rest)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expect
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    assert ply.elements[0].count == 500
    # stored values are the raw 3DGS parameters
    assert np.allclose(ply["vertex"]["scale_0"], np.log(g.scaling[:, 0].numpy()), atol=1e-5)
    op = g.opacity[:, 0].numpy().astype(np.float64)
    assert np.allclose(ply["vertex"]["opacity"], np.log(op / (1 - op)), atol=1e-4)
    back = read_gaussians_ply(path)
    assert np.allclose(back.xyz, g.xyz.numpy(), atol=1e-7)
    assert np.allclose(back.scaling, g.scaling.numpy(), rtol=1e-5)
    assert np.allclose(back.opacity, g.opacity.numpy(), atol=1e-6)
    assert np.allclose(back.rotation, g.rotation.numpy(), atol=1e-6)
    assert np.allclose(back.features_dc, g.features_dc.numpy(), atol=1e-7)
    if rest:
        assert np.allclose(back.features_rest, g.features_rest.numpy(), atol=1e-7)
        # channel-major layout: f_rest_0..K-1 are the red coefficients
        assert np.allclose(ply["vertex"]["f_rest_1"], g.features_rest[:, 1, 0].numpy())
    else:
        assert back.features_rest is None


def test_gaussian_ply_accepts_numpy_and_rejects_bad_values(tmp_path):
    g = _TorchGaussians(n=10)
    class Np:
        xyz = g.xyz.numpy(); scaling = g.scaling.numpy(); opacity = g.opacity.numpy()
        rotation = 3.0 * g.rotation.numpy(); features_dc = g.features_dc.numpy()
    back = read_gaussians_ply(write_gaussians_ply(tmp_path / "n.ply", Np()))
    assert np.allclose(back.rotation, g.rotation.numpy(), atol=1e-6)   # normalised on write
    Np.scaling = -Np.scaling
    with pytest.raises(InputError):
        write_gaussians_ply(tmp_path / "bad.ply", Np())
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(InputError):
        read_gaussians_ply(tmp_path / "junk.ply")
