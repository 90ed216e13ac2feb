"""Real size: a metric point map gives objects their heights in meters, in scene mode and with *Real size*.

A synthetic room in meters (real meshes of known heights, one lying on its side, standing on a floor)
is rendered to a metric depth map (1% depth noise) through a tilted camera: the point map a metric
model (MoGe-2) would give. Each object's 3D-2D pairs are its voxel centres and their pixels through its
own camera. Scene mode's placement and upright world (`place_objects`, `upright_scene`) and object
mode's *Real size* (`real_size_scale`) must give every object's height within 2%. Then the pipeline end
to end on the tiny model: a fake metric point-map model shows its own object at a known size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cupid.errors import InputError
from cupid.export import load_bundle
from cupid.geometry import CameraPose, Similarity, project, rodrigues, voxel_centers
from cupid.pipeline import CupidPipeline
from cupid.pipeline.scene import place_objects
from cupid.pipeline.world import real_size_scale, upright_scene
from cupid.reconstruction import Pairs, ReconstructedObject
from cupid.scene.alignment import point_map_from_depth
from helpers.bundles import reconstruct_to
from helpers.depth_render import render_depth
from helpers.meshes import chair, ell, suzanne, surface_voxels
from test_upright import _camera, _floor_tiles

W, H = 400, 300
K = np.array([[360.0, 0, 203.0], [0, 360.0, 148.0], [0, 0, 1]])
REPO = Path(__file__).resolve().parents[1]


class MetricMap:
    """Stands in for MoGe-2: a fixed metric point map with its intrinsics."""

    metric = True

    def __init__(self, points: np.ndarray, valid: np.ndarray, K: np.ndarray):
        self.points, self.valid, self.K = points, valid, K

    def infer(self, photo, *, principal_point=None, fov_x=None):
        return {"points": self.points, "mask": self.valid, "intrinsics_px": self.K}


def metric_room(seed: int):
    """Objects (mesh, faces, true height in meters, true placement in the upright world) and the camera."""
    rng = np.random.default_rng(seed)
    specs = [(suzanne, 0.35), (chair, 0.9), (ell, 0.5), (suzanne, 0.25)]
    objects, spots = [], [(-0.45, 0.1), (0.45, 0.3), (0.05, -0.35), (-0.15, 0.6)]
    for k, (make, height) in enumerate(specs):
        v, f = make()
        R = rodrigues(np.array([0, 0, np.radians(rng.uniform(0, 360))]))
        if k == 3:   # on its side
            R = R @ rodrigues(np.array([np.pi / 2, 0, 0]))
        s = height / np.ptp(v[:, 2])                       # the standing height in meters
        low = (s * v @ R.T)[:, 2].min()
        objects.append((v, f, height, Similarity(s, R, np.array([*spots[k], -low]))))
    world = np.concatenate([p.apply(v) for v, _, _, p in objects])
    R_c, t_c = _camera(rng, world.mean(0), 0.6 * float(np.linalg.norm(np.ptp(world, axis=0))), -35.0, 8.0)
    return objects, R_c, t_c


def rendered(objects, R_c, t_c, noise: float, seed: int):
    floor = _floor_tiles(R_c, t_c, half=4.0, n=40)
    depth, ids = render_depth([floor] + [(p.apply(v), f) for v, f, _, p in objects], K, R_c, t_c, W, H)
    rng = np.random.default_rng(seed)
    valid = np.isfinite(depth)
    noisy = np.where(valid, depth * (1 + rng.normal(0, noise, depth.shape)), 0.0)
    return point_map_from_depth(noisy, K), valid, ids


def reconstructed(objects, R_c, t_c, ids):
    """Each object as the pipeline has it: mesh (object frame), its own camera, its pairs, its mask."""
    out, alphas = [], []
    for k, (v, f, _, p) in enumerate(objects):
        cam_obj = Similarity(1.0, R_c, t_c).compose(p)             # object -> camera frame (meters)
        own = CameraPose(K, cam_obj.R, cam_obj.t / cam_obj.scale, W, H)   # the object's own (unit) camera
        X = voxel_centers(surface_voxels(v, f, res=64), 64)
        uv = project(X, K, own.R, own.t, (W, H))
        obj = ReconstructedObject(name=f"object_{k}", vertices=v, faces=f, camera=own, pairs=Pairs(X, uv, 64))
        alpha = (ids == k + 1).astype(np.float32)
        obj.mask = alpha
        out.append(obj)
        alphas.append(alpha)
    return out, alphas


def _heights(objects, world_objects) -> list[float]:
    """Standing height (z extent in the upright world) of each placed object, the lying one excluded."""
    return [float(np.ptp(o.placement.apply(np.asarray(o.vertices))[:, 2])) for o in world_objects]


@pytest.mark.parametrize("seed,noise", [(1, 0.0), (3, 0.01), (5, 0.01), (10, 0.01)])
def test_scene_mode_heights_in_meters(seed, noise):
    objects, R_c, t_c = metric_room(seed)
    pm, valid, ids = rendered(objects, R_c, t_c, noise, seed)
    recs, alphas = reconstructed(objects, R_c, t_c, ids)
    place_objects(recs, alphas, pm, valid, seed=seed)
    camera, world = upright_scene(recs, CameraPose(K, np.eye(3), np.zeros(3), W, H), pm, valid, alphas, seed=seed)
    assert world.source == "ground_plane"
    truth = [float(np.ptp(p.apply(v)[:, 2])) for v, _, _, p in objects]
    for k, (got, want) in enumerate(zip(_heights(objects, recs), truth)):
        assert abs(got / want - 1) < 0.02, (k, got, want)
    # and the camera still sees every object where the photo has it
    for o, (v, f, _, p) in zip(recs, objects):
        uv_true = project(p.apply(v), K, R_c, t_c, (W, H))
        uv_got = project(o.placement.apply(v), camera.K, camera.R, camera.t, (W, H))
        assert np.nanmedian(np.linalg.norm((uv_got - uv_true) * [W, H], axis=1)) < 2.0 + 300 * noise


@pytest.mark.parametrize("seed,noise", [(1, 0.0), (5, 0.01), (10, 0.01)])
def test_real_size_gives_each_object_its_height(seed, noise):
    objects, R_c, t_c = metric_room(seed)
    pm, valid, ids = rendered(objects, R_c, t_c, noise, seed)
    recs, alphas = reconstructed(objects, R_c, t_c, ids)
    model = MetricMap(pm, valid, K)
    for k, (obj, (v, _, height, p)) in enumerate(zip(recs, objects)):
        if k == 3:
            continue   # object mode reconstructs an object standing up: the lying one is scene mode's
        scale = real_size_scale(model, np.zeros((H, W, 3), np.uint8), obj, alphas[k], seed=seed)
        assert abs(scale * np.ptp(v[:, 2]) / height - 1) < 0.02, (k, scale * np.ptp(v[:, 2]), height)


# ------------------------------------------------------------------ the pipeline, end to end

@pytest.fixture(scope="module")
def pipe(tiny_model) -> CupidPipeline:
    return CupidPipeline.from_pretrained(tiny_model, device="cpu")


def test_real_size_end_to_end(pipe, tmp_path):
    """The tiny model's own object rendered at 0.37 m per unit through its own camera is the metric point
    map: *Real size* must give it that size (and the same camera view), scene.json says meters."""
    photo = REPO / "examples" / "monkey.png"
    relative = pipe.reconstruct(photo, seed=0, real_size=False)
    obj = relative.objects[0]
    assert relative.units == "relative"
    own = obj.camera                                  # the object's own frame
    m = 0.37
    depth, _ = render_depth([(m * np.asarray(obj.vertices, float), np.asarray(obj.faces))], own.K, own.R, m * own.t,
                            own.width, own.height)
    valid = np.isfinite(depth)
    fake = MetricMap(point_map_from_depth(np.where(valid, depth, 0.0), own.K), valid, own.K)
    pipe._point_map_model = fake
    try:
        assert pipe.metric_point_map_present()
        out = reconstruct_to(pipe, photo, tmp_path / "metric", seed=0)      # real size by default now
        scene = load_bundle(out).scene
        assert scene["units"] == "meters"
        tr = scene["objects"][0]["transform"]
        # the tiny model's pairs are voxel centres, up to half a voxel inside its decoded surface: a few %
        # (the 2% of the issue is held on exact synthetic geometry above)
        assert abs(tr["scale"] / m - 1) < 0.05, tr["scale"]
        v = np.asarray(obj.vertices, float)
        M = np.array(scene["objects"][0]["matrix_world"])
        placed = v @ M[:3, :3].T + M[:3, 3]
        assert placed[:, 2].min() == pytest.approx(0.0, abs=1e-6)          # standing on z = 0, centred
        np.testing.assert_allclose((placed.min(0) + placed.max(0))[:2] / 2, 0.0, atol=1e-6)
        cam = load_bundle(out).camera()
        np.testing.assert_allclose(project(placed, cam.K, cam.R, cam.t, cam.image_size),
                                   own.project(v), atol=1e-6)                 # the photo's view, unchanged
        no = reconstruct_to(pipe, photo, tmp_path / "off", seed=0, real_size=False)
        assert load_bundle(no).scene["units"] == "relative"
    finally:
        pipe._point_map_model = None


def test_real_size_needs_a_metric_model(pipe, tmp_path):
    """The tiny model's point map is MoGe v1 (no units): asking for Real size says so, before any work."""
    assert not pipe.metric_point_map_present()
    with pytest.raises(InputError, match="metric point-map model"):
        pipe.reconstruct(REPO / "examples" / "monkey.png", real_size=True)
    with pytest.raises(InputError, match="object mode"):
        pipe.reconstruct(REPO / "examples" / "scene.png", mode="scene", real_size=True)


def test_cli_point_map_model_and_real_size_flags(tiny_model, tmp_path):
    """`--point-map-model` picks a metric MoGe-2 (a tiny one in the official model.pt layout): the scene
    comes out in meters; `--real-size` is refused in scene mode before any model loads."""
    from cupid.cli import main as cupid_main
    from cupid.tiny import write_tiny_moge2

    scene_png, labels = REPO / "examples" / "scene.png", REPO / "examples" / "scene_labels.png"
    assert cupid_main(["reconstruct", str(scene_png), "-o", str(tmp_path / "x"), "--mode", "scene",
                       "--real-size", "--model", str(tiny_model)]) == 2
    moge2 = write_tiny_moge2(tmp_path / "moge2", metric_scale=2.5)
    out = tmp_path / "scene"
    assert cupid_main(["reconstruct", str(scene_png), "-o", str(out), "--mode", "scene", "--mask", str(labels),
                       "--model", str(tiny_model), "--device", "cpu", "--steps", "1",
                       "--point-map-model", str(moge2)]) == 0
    scene = load_bundle(out).scene
    assert scene["units"] == "meters" and scene["up"]["source"] in ("objects", "ground_plane")


def test_moge2_is_the_point_map_model_once_downloaded(pipe, tmp_path, monkeypatch):
    """Without a model named, MoGe-2 is used when `cupid download` put it in the weights cache, else MoGe v1;
    nothing is downloaded to find out."""
    from cupid import config
    from cupid.hub import cached_file

    cache = tmp_path / "hub"
    monkeypatch.setenv("CUPID_WEIGHTS_DIR", str(cache))
    monkeypatch.setitem(pipe.settings, "moge_model", "")
    assert cached_file(config.MOGE2_ID, config.MOGE_FILE) is None
    assert pipe.point_map_source == config.MOGE_ID and not pipe.metric_point_map_present()
    repo = cache / ("models--" + config.MOGE2_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / config.MOGE_FILE).write_bytes(b"weights")
    assert cached_file(config.MOGE2_ID, config.MOGE_FILE) == snap / config.MOGE_FILE
    assert pipe.point_map_source == config.MOGE2_ID
    assert config.DOWNLOAD_PATTERNS[config.MOGE2_ID] == [config.MOGE_FILE]   # `cupid download` fetches it
