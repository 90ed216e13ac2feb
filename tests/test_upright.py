"""`cupid.scene.upright`: an upright world from the objects' own ups, and from a ground plane.

Synthetic scenes in a true upright world (floor z = 0): 1-6 real meshes, one lying on its side, one on
a table, the rest standing on the floor, seen by cameras pitched -65°..+15° and rolled ±25°; each
object's placement in the camera frame is turned 1° about a random axis and scaled by 1 + N(0, 1%), and the
whole camera-frame scene any global scale (a point map has no units). `upright_world` must find up
within 1.5° and the floor within 2% of the scene's size; a floor in the point map within 0.5°.
"""
from __future__ import annotations

import numpy as np
import pytest

from cupid.errors import InputError
from cupid.geometry import CameraPose, Similarity, rodrigues, rotation_angle_deg
from cupid.scene.alignment import point_map_from_depth
from cupid.scene.upright import camera_prior_cost, level_rotation, stand_object, upright_world
from helpers.depth_render import render_depth
from helpers.meshes import box, chair, ell, merge, suzanne

MESHES = [suzanne, chair, ell, lambda: box([-0.3, -0.2, -0.45], [0.3, 0.2, 0.45])]
W, H = 320, 240


def _rot_z(deg: float) -> np.ndarray:
    return rodrigues(np.array([0.0, 0.0, np.radians(deg)]))


def _noisy_rotation(rng, deg: float) -> np.ndarray:
    """A rotation by `deg` about a random axis: the placement's rotation is off by that much."""
    axis = rng.normal(size=3)
    return rodrigues(axis / np.linalg.norm(axis) * np.radians(deg))


def _camera(rng, target: np.ndarray, size: float, pitch: float, roll: float):
    """An OpenCV camera (R, t) in the true world looking at `target` with the given pitch and roll,
    from 1.5-3 scene sizes away, always at least 5% of the scene's size above the floor."""
    yaw = rng.uniform(0, 360)
    p, y = np.radians(pitch), np.radians(yaw)
    forward = np.array([np.cos(p) * np.sin(y), np.cos(p) * np.cos(y), np.sin(p)])
    right = np.array([np.cos(y), -np.sin(y), 0.0])
    down = np.cross(forward, right)                      # image y (down), OpenCV: x right, y down, z forward
    R_level = np.stack([right, down, forward])           # world -> camera, no roll
    R = rodrigues(np.array([0.0, 0.0, np.radians(roll)])) @ R_level
    dist = size * rng.uniform(1.5, 3.0)
    centre = target - dist * forward
    centre[2] = max(centre[2], 0.05 * size)
    return R, -R @ centre


def synthetic_scene(seed: int, n: int):
    """(true placements (object -> upright world), vertices, camera R, t, scene size)."""
    rng = np.random.default_rng(seed)
    placements, verts = [], []
    spots = rng.uniform(-1.2, 1.2, (n, 2))
    for k in range(n):
        v, _ = MESHES[(seed + k) % len(MESHES)]()
        s = rng.uniform(0.4, 1.0)
        yaw = _rot_z(rng.uniform(0, 360))
        lying = n >= 2 and k == 0
        on_table = (n >= 3 and k == 1) or (n == 2 and k == 1 and seed % 2 == 0)
        R = yaw
        if lying:   # on its side: 90° about a horizontal axis of its own
            R = yaw @ rodrigues(np.array([np.pi / 2, 0, 0]) if rng.random() < 0.5 else np.array([0, np.pi / 2, 0]))
        base = rng.uniform(0.5, 0.9) if on_table else 0.0
        lowest = (s * v @ R.T)[:, 2].min()
        t = np.array([spots[k, 0], spots[k, 1], base - lowest])
        placements.append(Similarity(s, R, t))
        verts.append(v)
    world = np.concatenate([p.apply(v) for p, v in zip(placements, verts)])
    size = float(np.linalg.norm(np.ptp(world, axis=0)))
    target = world.mean(0)
    pitch, roll = rng.uniform(-65, 15), rng.uniform(-25, 25)
    R_c, t_c = _camera(rng, target, size, pitch, roll)
    return placements, verts, R_c, t_c, size, (pitch, roll)


def camera_frame(placements, R_c, t_c, rng, scale: float, rot_noise=1.0, scale_noise=0.01):
    """Noisy object -> camera-frame placements of a scene scaled by `scale` (the camera frame scales too)."""
    cam = Similarity(1.0, R_c, t_c)
    out = []
    for p in placements:
        q = cam.compose(p)
        out.append(Similarity(scale * q.scale * (1 + rng.normal(0, scale_noise)),
                              _noisy_rotation(rng, rot_noise) @ q.R, scale * q.t))
    return out


def _errors(world, R_c, t_c, scale, size, placements, verts):
    up_true = R_c[:, 2]                               # world +Z in the camera frame
    up_found = world.R[2]
    up_err = np.degrees(np.arccos(np.clip(up_true @ up_found, -1, 1)))
    # the true floor (z = 0) under the objects' footprint, in the found world
    world_pts = np.concatenate([p.apply(v) for p, v in zip(placements, verts)])
    lo, hi = world_pts[:, :2].min(0), world_pts[:, :2].max(0)
    g = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 5), np.linspace(lo[1], hi[1], 5)), -1).reshape(-1, 2)
    floor_true = np.c_[g, np.zeros(len(g))]
    floor_cam = scale * (floor_true @ R_c.T + t_c)
    z = world.apply(floor_cam)[:, 2]
    floor_err = float(np.median(np.abs(z))) / (scale * size)
    return up_err, floor_err


CASES = [(seed, n) for n in range(1, 7) for seed in range(40)]


def test_upright_world_from_the_objects_alone():
    worst_up, worst_floor = 0.0, 0.0
    for seed, n in CASES:
        placements, verts, R_c, t_c, size, (pitch, roll) = synthetic_scene(seed, n)
        rng = np.random.default_rng(1000 + seed)
        scale = float(np.exp(rng.uniform(np.log(0.01), np.log(100.0))))
        noisy = camera_frame(placements, R_c, t_c, rng, scale)
        world = upright_world(noisy, verts)
        assert world.scale == 1.0 and np.linalg.det(world.R) == pytest.approx(1.0)
        assert world.source == "objects"
        up_err, floor_err = _errors(world, R_c, t_c, scale, size, placements, verts)
        assert up_err < 1.5, (seed, n, pitch, roll, up_err)
        assert floor_err < 0.02, (seed, n, pitch, roll, floor_err)
        worst_up, worst_floor = max(worst_up, up_err), max(worst_floor, floor_err)
        # the lowest point of the (noisy) objects sits on z = 0
        lowest = min(float(world.compose(p).apply(v)[:, 2].min()) for p, v in zip(noisy, verts))
        assert abs(lowest) < 1e-9 * scale * size
    print(f"worst up error {worst_up:.3f} deg, worst floor error {100 * worst_floor:.3f}% of the scene")


def test_one_object_gives_its_own_up_and_yaw_follows_the_camera():
    placements, verts, R_c, t_c, size, _ = synthetic_scene(3, 1)
    noisy = camera_frame(placements, R_c, t_c, np.random.default_rng(0), 1.0, rot_noise=0.0, scale_noise=0.0)
    world = upright_world(noisy, verts)
    np.testing.assert_allclose(world.R[2], noisy[0].R[:, 2], atol=1e-12)
    cam = CameraPose(np.eye(3), np.eye(3), np.zeros(3), 1, 1).in_moved_world(world)
    forward = cam.R[2]                                   # the camera's optical axis in the upright world
    assert forward[1] > 0 and abs(forward[0]) < 1e-9    # looks along +Y
    assert cam.R[0] @ np.array([1.0, 0, 0]) > 0.9       # its right is +X


def test_a_wrong_placement_does_not_tilt_the_world():
    placements, verts, R_c, t_c, size, _ = synthetic_scene(11, 5)
    rng = np.random.default_rng(4)
    noisy = camera_frame(placements, R_c, t_c, rng, 2.0)
    noisy[3] = Similarity(noisy[3].scale, rodrigues(np.array([0.9, 0.4, -0.3])) @ noisy[3].R, noisy[3].t)
    world = upright_world(noisy, verts)
    up_err, _ = _errors(world, R_c, t_c, 2.0, size, placements, verts)
    assert up_err < 1.5 and world.agreeing == 3       # the lying and the wrong one are out-voted


def test_the_camera_prior_breaks_a_tie_and_can_fail():
    """Two objects, one on its side: the votes tie; the camera decides. Without the prior the first
    object's (wrong) up would win: the test would fail if the prior were not used."""
    wins = 0
    for seed in range(0, 40, 2):
        placements, verts, R_c, t_c, size, _ = synthetic_scene(seed, 2)
        noisy = camera_frame(placements, R_c, t_c, np.random.default_rng(seed), 1.0)
        lying_up = noisy[0].R[:, 2]
        assert camera_prior_cost(lying_up, np.concatenate([p.apply(v) for p, v in zip(noisy, verts)])) > 0
        world = upright_world(noisy, verts)
        wins += np.degrees(np.arccos(np.clip(world.R[2] @ R_c[:, 2], -1, 1))) < 1.5
    assert wins == 20


def test_level_rotation_is_a_rotation():
    rng = np.random.default_rng(0)
    for up in list(rng.normal(size=(20, 3))) + [np.array([0, 0, 1.0]), np.array([0, 0, -1.0])]:
        R = level_rotation(up)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(R @ (up / np.linalg.norm(up)), [0, 0, 1], atol=1e-12)


def test_bad_input():
    with pytest.raises(InputError):
        upright_world([], [])
    p = Similarity(1.0, np.eye(3), np.zeros(3))
    with pytest.raises(InputError):
        upright_world([p], [np.zeros((0, 3))])
    with pytest.raises(InputError):
        upright_world([p, p], [np.ones((4, 3)), np.ones((4, 3))], weights=[0, 0])


def test_stand_object_puts_it_on_z0_centred():
    v, _ = chair()
    world = stand_object(v, scale=0.7)
    placed = world.apply(v)
    assert placed[:, 2].min() == pytest.approx(0.0, abs=1e-12)
    lo, hi = placed.min(0), placed.max(0)
    np.testing.assert_allclose((lo + hi)[:2] / 2, 0.0, atol=1e-12)
    assert (hi - lo)[2] == pytest.approx(0.7 * np.ptp(v[:, 2]))


# ------------------------------------------------------------------ the ground plane of a point map

def _floor_tiles(R_c, t_c, half: float = 6.0, n: int = 60):
    """The floor z = 0 over [-half, half]² as n² square tiles (two triangles each), less the tiles that
    reach behind the camera (the rasteriser needs every vertex in front)."""
    g = np.linspace(-half, half, n + 1)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    v = np.c_[xx.ravel(), yy.ravel(), np.zeros(xx.size)]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a = (i * (n + 1) + j).ravel()
    quads = np.stack([a, a + n + 1, a + n + 2, a + 1], 1)
    in_front = (v @ R_c.T + t_c)[:, 2] > 0.05
    quads = quads[in_front[quads].all(1)]
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    used = np.unique(faces)
    remap = np.full(len(v), -1)
    remap[used] = np.arange(len(used))
    return v[used], remap[faces]


def floor_scene(seed: int, noise: float):
    """A rendered scene: a 12 x 12 floor and 3 objects on it, one on its side, seen by a tilted
    camera; the point map is the true depth with `noise` relative depth noise, in any units."""
    placements, verts, R_c, t_c, size, angles = synthetic_scene(seed, 3)
    placements[1] = Similarity(placements[1].scale, placements[1].R,
                               placements[1].t - [0, 0, (placements[1].apply(verts[1])[:, 2].min())])  # all on the floor
    floor = _floor_tiles(R_c, t_c)
    meshes = [(p.apply(MESHES[(seed + k) % len(MESHES)]()[0]), MESHES[(seed + k) % len(MESHES)]()[1])
              for k, p in enumerate(placements)]
    K = np.array([[260.0, 0, W / 2], [0, 260.0, H / 2], [0, 0, 1]])
    depth, ids = render_depth([floor] + meshes, K, R_c, t_c, W, H)
    rng = np.random.default_rng(seed)
    valid = np.isfinite(depth)
    noisy = np.where(valid, depth * (1 + rng.normal(0, noise, depth.shape)), 0.0)
    return placements, verts, R_c, t_c, size, point_map_from_depth(noisy, K), valid, ids


@pytest.mark.parametrize("seed,noise", [(1, 0.0), (2, 0.005), (7, 0.01), (11, 0.02), (4, 0.01)])
def test_a_floor_in_the_point_map_refines_up_within_half_a_degree(seed, noise):
    placements, verts, R_c, t_c, size, pm, valid, ids = floor_scene(seed, noise)
    rng = np.random.default_rng(seed)
    noisy = camera_frame(placements, R_c, t_c, rng, 1.0, rot_noise=3.0)   # worse objects than the floor
    assert (ids == 0).mean() > 0.08, "the floor covers a good part of the photo"
    world = upright_world(noisy, verts, points=pm, valid=valid, exclude=ids > 0)
    assert world.source == "ground_plane"
    up_err = np.degrees(np.arccos(np.clip(world.R[2] @ R_c[:, 2], -1, 1)))
    assert up_err < 0.5, up_err
    # z = 0 is the floor: the floor's pixels sit at height ~0
    z = world.apply(pm[ids == 0])[:, 2]
    assert abs(float(np.median(z))) < 0.005 * size
    objects_only = upright_world(noisy, verts)
    up_obj = np.degrees(np.arccos(np.clip(objects_only.R[2] @ R_c[:, 2], -1, 1)))
    assert up_err < up_obj or up_obj < 0.5


def test_no_plane_under_the_objects_keeps_the_objects_up():
    """A point map of a wall only (no floor under the objects): the objects decide."""
    placements, verts, R_c, t_c, size, _, _, _ = floor_scene(1, 0.0)
    noisy = camera_frame(placements, R_c, t_c, np.random.default_rng(0), 1.0)
    K = np.array([[260.0, 0, W / 2], [0, 260.0, H / 2], [0, 0, 1]])
    depth = np.full((H, W), 30.0)                      # a fronto-parallel wall far behind
    world = upright_world(noisy, verts, points=point_map_from_depth(depth, K), valid=np.ones((H, W), bool))
    assert world.source == "objects"
