"""The rectified-flow Euler sampler: time schedule, exactness on straight paths, CFG interval, cancel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cupid.errors import Cancelled
from cupid.sampler import FlowSampler, draw_noise, noise_stream
from cupid.sparse import SparseTensor


def test_rescaled_timesteps():
    s = FlowSampler(steps=10, rescale_t=3.0)
    t = np.linspace(1, 0, 11)
    np.testing.assert_allclose(s.timesteps(), 3 * t / (1 + 2 * t))
    assert s.timesteps()[0] == 1.0 and s.timesteps()[-1] == 0.0
    assert np.all(np.diff(s.timesteps()) < 0)


def test_straight_path_is_integrated_exactly_and_model_sees_1000t():
    """With the exact velocity of a straight path, Euler lands on the data point."""
    x0 = torch.randn(2, 3, 4)
    seen = []

    def model(x, t, cond):
        seen.append(float(t[0]))
        tt = t[0] / 1000.0
        return (x - x0) / tt  # x_t = (1 - t) x0 + t eps  =>  v = eps - x0 = (x_t - x0) / t

    s = FlowSampler(steps=7, rescale_t=2.0)
    out = s.sample(model, draw_noise((2, 3, 4), noise_stream(1)), cond=None)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(seen, 1000 * s.timesteps()[:-1], rtol=1e-6)


def test_guidance_only_inside_interval():
    calls = []

    def model(x, t, cond):
        calls.append((round(float(t[0]) / 1000, 6), cond))
        return torch.full_like(x, 1.0 if cond == "c" else 5.0)

    s = FlowSampler(steps=4, cfg_strength=2.0, cfg_interval=(0.5, 1.0))
    x = s.sample(model, torch.zeros(1, 1), cond="c", neg_cond="u")
    ts = s.timesteps()
    inside = [t for t in ts[:-1] if 0.5 <= t <= 1.0]
    assert sum(1 for _, c in calls if c == "u") == len(inside) == 3  # t = 1, 0.75, 0.5
    # guided velocity (1 + w)·1 − w·5 = −7 for the steps inside, 1 outside
    expected = -sum((ts[i] - ts[i + 1]) * (-7.0 if ts[i] >= 0.5 else 1.0) for i in range(4))
    assert float(x) == pytest.approx(expected)


def test_sparse_tensors_and_progress():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.ones(2, 3), coords)
    fractions = []
    out = FlowSampler(steps=3).sample(lambda x, t, c: x.replace(torch.ones_like(x.feats)), x, None,
                                      progress=fractions.append)
    torch.testing.assert_close(out.feats, torch.zeros(2, 3), atol=1e-6, rtol=0)
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_cancel_between_steps():
    n = {"calls": 0}

    def model(x, t, c):
        n["calls"] += 1
        return x

    with pytest.raises(Cancelled):
        FlowSampler(steps=10).sample(model, torch.zeros(1), None, should_cancel=lambda: n["calls"] >= 2)
    assert n["calls"] == 2


def test_seeded_noise_is_reproducible():
    a, b, c = (draw_noise((3, 5), noise_stream(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert draw_noise((2,), noise_stream(7), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_from_pipeline_json_entry():
    s = FlowSampler.from_config({"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                 "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0],
                                            "rescale_t": 3.0}}, steps=5)
    assert (s.steps, s.cfg_strength, tuple(s.cfg_interval), s.rescale_t) == (5, 7.5, (0.5, 1.0), 3.0)


def _small_dense_flow() -> torch.nn.Module:
    from cupid.models import build_model

    torch.manual_seed(3)
    model = build_model("SparseStructureFlowModel", {
        "resolution": 4, "in_channels": 2, "out_channels": 2, "model_channels": 32, "cond_channels": 16,
        "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": True})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _small_sparse_flow() -> torch.nn.Module:
    from cupid.models import build_model

    torch.manual_seed(4)
    model = build_model("SLatFlowModel", {
        "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": 16,
        "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1,
        "io_block_channels": [16], "pe_mode": "ape", "qk_rms_norm": True})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


class _Counting(torch.nn.Module):
    """Counts forwards and the batch size each one saw."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x, t, cond, **kw):
        self.batches.append(int(t.shape[0]))
        return self.inner(x, t, cond, **kw)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_batched_guidance_equals_two_passes(kind):
    """One forward with the conditional and unconditional items stacked gives the velocities of two
    forwards (the release's way, batch_guidance=False) to float rounding, in half the forwards inside the
    guidance interval; steps outside it run the conditional pass alone."""
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(1, 7, 16, generator=g)
    if kind == "dense":
        model = _Counting(_small_dense_flow())
        noise = torch.randn(1, 2, 4, 4, 4, generator=g)
    else:
        model = _Counting(_small_sparse_flow())
        idx = torch.randperm(16 ** 3, generator=g)[:300]
        coords = torch.stack([torch.zeros_like(idx), idx // 256, (idx // 16) % 16, idx % 16], 1).int()
        noise = SparseTensor(torch.randn(300, 8, generator=g), coords)
    outs = {}
    for batched in (True, False):
        model.batches.clear()
        s = FlowSampler(steps=6, cfg_strength=3.0, cfg_interval=(0.4, 0.95), rescale_t=3.0, batch_guidance=batched)
        with torch.no_grad():
            out = s.sample(model, noise, cond, torch.zeros_like(cond))
        outs[batched] = out if kind == "dense" else out.feats
        guided = sum(s.guided(float(t), cond) for t in s.timesteps()[:-1])
        assert 0 < guided < 6
        if batched:
            assert len(model.batches) == 6 and model.batches.count(2) == guided
        else:
            assert len(model.batches) == 6 + guided and set(model.batches) == {1}
    scale = outs[False].abs().max()
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=float(scale) * 1e-5)
    assert scale > 0.1


def test_batched_guidance_stacks_dict_conditions_and_keyword_tensors():
    seen = {}

    def model(x, t, cond, uvs=None):
        seen["shapes"] = (tuple(x.shape), tuple(cond["a"].shape), tuple(cond["b"].shape), tuple(uvs.shape))
        seen["first"] = float(cond["a"][0, 0])
        return torch.ones_like(x) * cond["a"][:, :1]

    s = FlowSampler(steps=1, cfg_strength=1.0)
    cond = {"a": torch.full((1, 3), 2.0), "b": torch.zeros(1, 5)}
    neg = {"a": torch.full((1, 3), 0.5), "b": torch.zeros(1, 5)}
    out = s.sample(model, torch.zeros(1, 4), cond, neg, uvs=torch.zeros(1, 2))
    assert seen["shapes"] == ((2, 4), (2, 3), (2, 5), (2, 2)) and seen["first"] == 2.0
    # one Euler step from t=1 to 0 with v = 2·2 − 1·0.5 = 3.5
    torch.testing.assert_close(out, torch.full((1, 4), -3.5))
