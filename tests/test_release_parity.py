"""Seed for seed with CUPID's release: noise order, the release's DLT camera, one whole run, tiny JSONs.

The references in tests/fixtures/release_* come from CUPID's own code run on the CPU
(tests/fixtures/make_release_reference.py; each folder's README says what it holds).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cupid.geometry import CameraPose, solve_camera, voxel_centers
from cupid.models.registry import model_class
from cupid.pipeline import CupidPipeline
from cupid.pipeline.stage1 import pose_from_structure, voxel_uvs
from cupid.preprocess import preprocess
from cupid.progress import Progress
from cupid.sampler import draw_noise, noise_stream
from cupid.tiny import _configs, make_tiny_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "monkey.png"
TOL = 1e-4


def _release_camera_check(K_ours_px: np.ndarray, R: np.ndarray, t: np.ndarray, side: float,
                          K_rel: np.ndarray, Rt_rel: np.ndarray) -> None:
    """K compared in units of the image size (the release's K is in uv), R and t entry by entry."""
    np.testing.assert_allclose(K_ours_px / np.array([[side], [side], [1.0]]), K_rel, atol=TOL, rtol=0)
    np.testing.assert_allclose(R, Rt_rel[:3, :3], atol=TOL, rtol=0)
    np.testing.assert_allclose(t, Rt_rel[:3, 3], atol=TOL * max(1.0, float(np.abs(Rt_rel[:3, 3]).max())), rtol=0)


# ---------------------------------------------------------------- the seed

@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_noise_stream_is_the_releases_global_stream(seed):
    """The release: torch.manual_seed(seed), randn for stage 1, then randn for stage 2 (CPU)."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        want1 = torch.randn(1, 16, 16, 16, 16)
        want2 = torch.randn(5000, 8)
    finally:
        torch.set_rng_state(state)
    stream = noise_stream(seed)
    before = torch.get_rng_state()
    got1 = draw_noise((1, 16, 16, 16, 16), stream)
    got2 = draw_noise((5000, 8), stream)
    assert torch.equal(got1, want1) and torch.equal(got2, want2)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is not touched


# ---------------------------------------------------------------- the release's DLT camera

def _pose_cases():
    data = np.load(FIXTURES / "release_pose" / "cases.npz")
    for case in json.loads((FIXTURES / "release_pose" / "cases.json").read_text()):
        n = case["name"]
        yield n, case["res"], data[f"{n}.coords"].astype(np.int64), data[f"{n}.uv"], data[f"{n}.K"], data[f"{n}.Rt"]


@pytest.mark.parametrize("case", list(_pose_cases()), ids=lambda c: c[0])
@pytest.mark.parametrize("side", [518.0, 245.0])
def test_dlt_camera_is_the_releases(case, side):
    """Same uv cube (clean, noisy with 15% wrong pairs, a coarse 16³ blob): the release's K, R, t to 1e-4."""
    _, res, coords, uv, K_rel, Rt_rel = case
    sol = solve_camera(voxel_centers(coords, res), uv.astype(np.float64), (side, side), method="dlt")
    _release_camera_check(sol.K, sol.R, sol.t, side, K_rel, Rt_rel)
    assert sol.inliers.shape == (len(uv),)


def test_robust_and_dlt_differ_only_where_the_data_disagree():
    """On clean pairs both solvers give the same camera; with wrong pairs the robust one stays on
    the truth while the DLT (every pair counts) is pulled off, as in the release."""
    cases = {c[0]: c for c in _pose_cases()}
    _, res, coords, uv, K_rel, _ = cases["suzanne_clean"]
    X = voxel_centers(coords, res)
    a = solve_camera(X, uv, (518, 518), method="dlt")
    b = solve_camera(X, uv, (518, 518))
    np.testing.assert_allclose(a.K, b.K, atol=1e-3 * 518)
    _, res, coords, uv, K_rel, _ = cases["suzanne_noisy"]
    X = voxel_centers(coords, res)
    robust = solve_camera(X, uv, (518, 518))
    dlt = solve_camera(X, uv, (518, 518), method="dlt")
    assert abs(robust.K[0, 0] - b.K[0, 0]) < abs(dlt.K[0, 0] - b.K[0, 0])
    with pytest.raises(Exception, match="method must be one of"):
        solve_camera(X, uv, (518, 518), method="epnp")


def test_pose_from_structure_passes_the_method():
    cases = {c[0]: c for c in _pose_cases()}
    _, res, coords, uv, K_rel, Rt_rel = cases["suzanne_noisy"]
    from cupid.pipeline.stage1 import StructureResult

    occ = np.zeros((res,) * 3, bool)
    occ[tuple(coords.T)] = True
    s = StructureResult(occupancy=occ, uv_indices=coords, uv=uv.astype(np.float64))
    pose, sol = pose_from_structure(s, (10.0, 20.0), 300.0, (640, 480), method="dlt")
    _release_camera_check(sol.K, sol.R, sol.t, 300.0, K_rel, Rt_rel)
    np.testing.assert_allclose(pose.K[:2, 2], sol.K[:2, 2] + [10.0, 20.0])
    robust_pose, _ = pose_from_structure(s, (10.0, 20.0), 300.0, (640, 480))
    assert abs(robust_pose.K[0, 1]) == 0.0 and abs(pose.K[0, 0] - robust_pose.K[0, 0]) > 1e-3
    assert sol.K[0, 1] != 0.0 and pose.K[0, 1] == 0.0   # the exported camera has no skew


# ---------------------------------------------------------------- voxels behind the camera

def test_voxel_uvs_divide_by_the_negative_depth_then_clamp():
    """The release projects with the depth's sign and clamps: a voxel behind the camera is mirrored
    through the principal point, then clamped (not 0.5)."""
    K = np.array([[100.0, 0, 40.0], [0, 100.0, 60.0], [0, 0, 1.0]])
    pose = CameraPose(K, np.eye(3), np.array([0.0, 0.0, 0.2]), 100, 100)
    idx = np.array([[32, 32, 0], [33, 60, 0], [31, 31, 63], [40, 10, 63], [32, 32, 19]])
    X = voxel_centers(idx, 64)
    z = X[:, 2] + 0.2
    assert (z[:2] < 0).all() and (z[2:4] > 0).all()
    want = np.clip(((X[:, :2] + [0, 0]) / z[:, None] * 100 + [40, 60]) / 100, 0, 1)
    got = voxel_uvs(idx, 64, pose)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # behind the camera and below the axis: mirrored above the principal point and clamped, not 0.5
    assert got[1, 0] < 0.4 and got[1, 1] == 0.0
    # the release's own formula, in torch, as its pipeline computes it
    ext = torch.eye(4, dtype=torch.float64)
    ext[:3, 3] = torch.tensor([0.0, 0.0, 0.2])
    Kn = torch.tensor(K / np.array([[100.0], [100.0], [1.0]]))
    h = torch.cat([torch.tensor(X), torch.ones(len(X), 1, dtype=torch.float64)], 1) @ ext.T
    h = h[:, :3] @ Kn.T
    np.testing.assert_allclose(got, (h[:, :2] / h[:, 2:]).clamp(0, 1).numpy(), atol=1e-12)


# ---------------------------------------------------------------- tiny JSONs and the release's classes

def test_tiny_args_are_accepted_by_the_releases_constructors(tmp_path):
    sig = json.loads((FIXTURES / "release_classes" / "signatures.json").read_text())
    classes = sig["classes"]
    for stem, spec in _configs().items():
        rel = classes[spec["name"]]
        args = set(spec["args"])
        assert args <= set(rel["accepts"]) or rel["takes_any_keyword"], (stem, args - set(rel["accepts"]))
        assert set(rel["required"]) <= args, (stem, set(rel["required"]) - args)
        model_class(spec["name"])  # and our registry knows the class
    assert set(sig["tiny_model_loaded_by_release"]) == set(_configs())


def test_a_release_rejected_argument_is_rejected_by_us_too(tmp_path):
    from cupid.errors import CheckpointError
    from cupid.models import build_model

    spec = _configs()["slat_flow_tiny"]
    with pytest.raises(CheckpointError, match="pretrained_slat_enc"):
        build_model(spec["name"], {**spec["args"], "pretrained_slat_enc": "ckpts/slat_enc_tiny"})


# ---------------------------------------------------------------- one whole run, seed for seed

@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory) -> CupidPipeline:
    # the release's numbers are float32 ones: pinned, whatever "auto" picks on a CPU with bf16 instructions
    return CupidPipeline.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0),
                                         device="cpu", dtype="float32")


@pytest.mark.parametrize("seed,batch_guidance", [(0, True), (1, True), (7, True), (0, False)])
def test_whole_run_equals_the_releases(tiny_pipe, seed, batch_guidance):
    """Same seed, same tiny weights, same photo: the conditioning, stage-1 noise and latent, structure,
    uv, the dlt camera (in the crop), stage-2 noise and latent equal the release's (1e-4), with guidance's
    two passes as one batch (our default) and as two forwards (the release's way)."""
    ref = np.load(FIXTURES / "release_run" / "run.npz")
    p = f"seed{seed}."
    pipe = tiny_pipe
    # from the photo itself, our preprocessing and DINOv2 give the release's conditioning
    processed = preprocess(PHOTO)
    cond, visual = pipe.condition(processed)
    np.testing.assert_allclose(cond.numpy(), ref["cond"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(visual.numpy(), ref["visual"], atol=1e-6, rtol=0)
    crop = json.loads((FIXTURES / "release_run" / "run.json").read_text())["seeds"][0]["crop"]
    side = max(processed.size)
    # the release de-crops with the box before PIL rounds it and with the odd side; ours is the crop made
    assert abs(processed.crop.size - crop["fov_scale"] * side) <= 1.0
    assert np.abs(np.array(processed.crop.offset) - [crop["cx_offset"] * side, crop["cy_offset"] * side]).max() <= 0.5
    seen: dict[str, list] = {"noise": [], "out": []}

    def spy(sampler):
        inner = sampler.sample

        def sample(model, noise, *a, **k):
            out = inner(model, noise, *a, **k)
            seen["noise"].append(noise)
            seen["out"].append(out)
            return out
        return sample

    job = Progress()
    stream = noise_stream(seed)
    orig_ss, orig_slat = pipe.ss_sampler.sample, pipe.slat_sampler.sample
    pipe.ss_sampler.sample, pipe.slat_sampler.sample = spy(pipe.ss_sampler), spy(pipe.slat_sampler)
    pipe.ss_sampler.batch_guidance = pipe.slat_sampler.batch_guidance = batch_guidance
    try:
        structure = pipe.sample_structure(cond, stream, None, job)
        pose, sol = pose_from_structure(structure, (0.0, 0.0), 518.0, (518, 518), method="dlt")
        slat = pipe.sample_latent(structure, sol.pose, cond, visual, stream, None, job)
    finally:
        pipe.ss_sampler.sample, pipe.slat_sampler.sample = orig_ss, orig_slat
        pipe.ss_sampler.batch_guidance = pipe.slat_sampler.batch_guidance = True
    np.testing.assert_array_equal(seen["noise"][0].numpy(), ref[p + "noise1"])
    np.testing.assert_allclose(seen["out"][0].numpy(), ref[p + "z"], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.argwhere(structure.occupancy), ref[p + "coords"][:, 1:])
    np.testing.assert_array_equal(structure.uv_indices, ref[p + "uv_coords"][:, 1:])
    np.testing.assert_allclose(structure.uv, ref[p + "uv"], atol=TOL, rtol=0)
    _release_camera_check(sol.K, sol.R, sol.t, 518.0, ref[p + "K"], ref[p + "extrinsic"])
    np.testing.assert_array_equal(seen["noise"][1].feats.numpy(), ref[p + "noise2"])
    np.testing.assert_array_equal(slat.coords.numpy(), ref[p + "slat_coords"])
    np.testing.assert_allclose(slat.feats.numpy(), ref[p + "slat"], atol=TOL, rtol=0)


# ---------------------------------------------------------------- choosing the solver

def test_pnp_choice_reaches_the_camera(tiny_pipe):
    """reconstruct(pnp=...) picks the solver: the release's DLT has fx != fy (its skew is not exported),
    the robust one has square pixels; a model's pipeline.json "pnp" sets the default."""
    from cupid.errors import CheckpointError, InputError

    photo = PHOTO
    cams = {}
    for method in ("dlt", "robust"):
        cams[method] = tiny_pipe.reconstruct(photo, seed=2, steps=1, pnp=method).camera.K
    assert cams["robust"][0, 1] == 0 and cams["robust"][0, 0] == cams["robust"][1, 1]
    assert cams["dlt"][0, 1] == 0 and cams["dlt"][0, 0] != cams["dlt"][1, 1]  # no skew: Blender shows it
    with pytest.raises(InputError, match="pnp must be one of"):
        tiny_pipe.reconstruct(photo, pnp="epnp")

    model = Path(tiny_pipe.source)
    cfg = json.loads((model / "pipeline.json").read_text())
    for value, expect in (("dlt", "dlt"), (None, "robust"), ("ransac", CheckpointError)):
        args = {k: v for k, v in cfg["args"].items() if k != "pnp"}
        if value is not None:
            args["pnp"] = value
        (model / "pipeline.json").write_text(json.dumps({**cfg, "args": args}))
        if expect is CheckpointError:
            with pytest.raises(CheckpointError, match="pnp"):
                CupidPipeline.from_pretrained(model, device="cpu")
        else:
            assert CupidPipeline.from_pretrained(model, device="cpu").pnp == expect
    (model / "pipeline.json").write_text(json.dumps(cfg))
