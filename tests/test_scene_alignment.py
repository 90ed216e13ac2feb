"""Scene alignment: point-map sampling rules, voxel visibility, and recovery of object placements
in a scene rendered with Blender (Cycles silhouettes + ray-cast depth -> camera-frame point map)."""
from __future__ import annotations

import numpy as np
import pytest

from cupid.errors import InputError
from cupid.geometry import project, rotation_angle_deg, voxel_centers
from helpers.meshes import chair, ell, suzanne
from tests.blender_scripts.silhouette import setup_silhouette_render
from cupid.scene.alignment import (
    align_object,
    point_map_from_depth,
    sample_point_map,
    visible_points,
)


# ------------------------------------------------------------------ unit checks (no bpy)

def test_sample_point_map_bilinear_and_validity_rule():
    H, W = 6, 8
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    # an affine function of the pixel-centre position is reproduced exactly by bilinear sampling
    pm = np.stack([2 * j + 1, -i + 3, 0.5 * j + 0.25 * i], -1)
    valid = np.ones((H, W), bool)
    uv = np.array([[3.3 / W, 2.7 / H], [0.5 / W, 0.5 / H], [(W - 0.5) / W, (H - 0.5) / H],
                   [0.2 / W, 3.0 / H], [0.5, 1.2], [np.nan, 0.5]])
    pts, ok = sample_point_map(pm, valid, uv)
    assert ok.tolist() == [True, True, True, False, False, False]
    x, y = uv[:3, 0] * W, uv[:3, 1] * H
    assert np.allclose(pts[:3], np.stack([2 * x + 1, -y + 3, 0.5 * x + 0.25 * y], -1))
    assert np.all(np.isnan(pts[3:]))
    # one invalid neighbour rejects the sample; a NaN in the map counts as invalid
    valid[3, 4] = False
    pm2 = pm.copy()
    pm2[1, 1] = np.nan
    _, ok2 = sample_point_map(pm2, valid, np.array([[4.2 / W, 3.2 / H], [1.6 / W, 1.4 / H],
                                                    [6.0 / W, 1.0 / H]]))
    assert ok2.tolist() == [False, False, True]
    with pytest.raises(InputError):
        sample_point_map(pm[..., :2], valid, uv)
    with pytest.raises(InputError):
        sample_point_map(pm, valid[:3], uv)


def test_point_map_from_depth_reprojects():
    K = np.array([[50.0, 0, 17], [0, 55, 11], [0, 0, 1]])
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 3, (20, 30))
    pm = point_map_from_depth(depth, K)
    assert np.allclose(pm[..., 2], depth)
    uv = project(pm.reshape(-1, 3), K, np.eye(3), np.zeros(3), (30, 20))
    j, i = np.meshgrid(np.arange(30) + 0.5, np.arange(20) + 0.5)
    assert np.allclose(uv * [30, 20], np.stack([j, i], -1).reshape(-1, 2))


def test_visible_points_keeps_front_layer():
    # two parallel 20x20 sheets of voxels, the camera looks at them along +z
    g = np.stack(np.meshgrid(np.arange(22, 42), np.arange(22, 42), indexing="ij"), -1).reshape(-1, 2)
    front = np.c_[g, np.full(len(g), 10)]
    back = np.c_[g, np.full(len(g), 50)]
    pts = voxel_centers(np.r_[front, back])
    K = np.array([[600.0, 0, 256], [0, 600, 256], [0, 0, 1]])
    vis = visible_points(pts, K, np.eye(3), np.array([0, 0, 3.0]), (512, 512))
    assert vis[: len(front)].all() and not vis[len(front):].any()
    # seen from the other side the back sheet is the visible one
    R = np.diag([1.0, -1, -1])
    vis2 = visible_points(pts, K, R, np.array([0, 0, 3.0]), (512, 512))
    assert not vis2[: len(front)].any() and vis2[len(front):].all()


def test_align_object_bad_input():
    pm = np.zeros((10, 10, 3))
    with pytest.raises(InputError):
        align_object(np.zeros((5, 3)), np.zeros((4, 2)), pm)
    with pytest.raises(InputError):  # nothing valid to sample
        align_object(np.random.rand(50, 3), np.random.rand(50, 2), pm, np.zeros((10, 10), bool))


# ------------------------------------------------------------------ rendered scene

def _meshes():
    return [suzanne(), chair(), ell()]


def _surface_voxels(v, f, rng):
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    n = 300_000
    which = rng.choice(len(f), size=n, p=area / area.sum())
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    p = ((1 - s)[:, None] * tri[which, 0] + (s * (1 - r2))[:, None] * tri[which, 1]
         + (s * r2)[:, None] * tri[which, 2])
    return np.unique(np.clip(np.floor((p + 0.5) * 64), 0, 63).astype(int), axis=0)


def _rot(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    th = np.radians(deg)
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * k @ k


def _look_at(eye, target):
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


@pytest.fixture(scope="module")
def rendered_scene(tmp_path_factory):
    bpy = pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed")
    import cv2
    from mathutils import Matrix, Vector

    from cupid_blender.camera import add_camera

    W, H = 320, 240
    f = 300.0
    K = np.array([[f, 0, 168.0], [0, f, 114.0], [0, 0, 1]])
    Rc, tc = _look_at(np.array([0.4, -3.6, 1.9]), np.array([0.0, 0.0, 0.2]))
    placements = [  # (scale, R, t) object frame -> world
        (0.9, _rot([0.2, 0.3, 1], 35), np.array([-0.85, 0.1, 0.45])),
        (1.15, _rot([1, -0.4, 0.2], -25), np.array([0.75, 0.35, 0.3])),
        (0.7, _rot([0.1, 1, 0.3], 70), np.array([0.05, -0.75, -0.1])),
    ]
    meshes = _meshes()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    objs = []
    for k, ((v, fc), (s, R, t)) in enumerate(zip(meshes, placements)):
        me = bpy.data.meshes.new(f"m{k}")
        me.from_pydata(v.tolist(), [], fc.tolist())
        me.update()
        ob = bpy.data.objects.new(f"o{k}", me)
        scene.collection.objects.link(ob)
        M = np.eye(4)
        M[:3, :3] = s * R
        M[:3, 3] = t
        ob.matrix_world = Matrix(M.tolist())
        objs.append(ob)
    add_camera(scene, K, Rc, tc, W, H)
    out = tmp_path_factory.mktemp("scene") / "scene.png"
    setup_silhouette_render(scene, out, samples=8)
    bpy.ops.render.render(write_still=True)
    alpha = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[:, :, 3] > 127

    # true depth: ray-cast every pixel centre through the same camera
    depsgraph = bpy.context.evaluated_depsgraph_get()
    eye = -Rc.T @ tc
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    dirs = (np.stack([j, i, np.ones_like(j)], -1).reshape(-1, 3) @ np.linalg.inv(K).T) @ Rc
    ids = np.full(W * H, -1)
    hits = np.full((W * H, 3), np.nan)
    origin = Vector(eye.tolist())
    names = {ob.name: k for k, ob in enumerate(objs)}
    for n, d in enumerate(dirs):
        ok, loc, _nrm, _idx, ob, _m = scene.ray_cast(depsgraph, origin, Vector(d.tolist()))
        if ok:
            hits[n] = loc[:]
            ids[n] = names[ob.name]
    ids = ids.reshape(H, W)
    pm = (hits @ Rc.T + tc).reshape(H, W, 3)  # camera-frame point map
    valid = ids >= 0
    depth = np.where(valid, pm[..., 2], 0.0)
    # the Cycles silhouette (camera from add_camera) and the ray-cast hits agree
    iou = (alpha & valid).sum() / (alpha | valid).sum()
    assert iou > 0.99, iou
    return dict(K=K, Rc=Rc, tc=tc, W=W, H=H, placements=placements, meshes=meshes,
                point_map=point_map_from_depth(depth, K), valid=valid, ids=ids)


@pytest.mark.blender
@pytest.mark.parametrize("noise_px,wrong", [(0.0, 0.0), (0.5, 0.15)])
def test_recover_scene_placements(rendered_scene, noise_px, wrong):
    sc = rendered_scene
    K, Rc, tc, W, H = sc["K"], sc["Rc"], sc["tc"], sc["W"], sc["H"]
    rng = np.random.default_rng(int(noise_px * 10 + wrong * 100))
    centres = np.array([Rc @ t + tc for _, _, t in sc["placements"]])
    scene_size = np.linalg.norm(centres.max(0) - centres.min(0)) + 1.0
    for k, ((v, f), (s, Ro, to)) in enumerate(zip(sc["meshes"], sc["placements"])):
        pts = voxel_centers(_surface_voxels(v, f, rng))
        # true object-frame camera: x_cam / s = (Rc Ro) x + (Rc to + tc) / s
        R_obj, t_obj = Rc @ Ro, (Rc @ to + tc) / s
        uv = project(pts, K, R_obj, t_obj, (W, H))
        vis = visible_points(pts, K, R_obj, t_obj, (W, H))
        uv = uv + rng.normal(0, noise_px, uv.shape) / np.array([W, H])
        bad = rng.random(len(uv)) < wrong
        uv[bad] = rng.random((int(bad.sum()), 2))
        sim = align_object(pts, uv, sc["point_map"], sc["valid"], object_mask=sc["ids"] == k,
                           visible=vis)
        R_true, t_true = Rc @ Ro, Rc @ to + tc
        rot_err = rotation_angle_deg(sim.R, R_true)
        scale_err = abs(sim.scale / s - 1)
        pos_err = np.linalg.norm(sim.t - t_true) / scene_size
        assert rot_err < 1.0, (k, rot_err)
        assert scale_err < 0.01, (k, scale_err)
        assert pos_err < 0.01, (k, pos_err)
        assert sim.inliers.sum() > 200
        if wrong:
            assert sim.inliers[bad].mean() < 0.1
