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
