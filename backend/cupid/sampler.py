"""Rectified-flow Euler sampler with classifier-free guidance inside an interval (TRELLIS/CUPID).

Time runs from 1 (noise) to 0 (data) on t' = r·t / (1 + (r − 1)·t); the model is given 1000·t and
predicts the velocity v, and x_{t_prev} = x_t − (t − t_prev)·v. Guidance (1 + w)·v_cond − w·v_uncond
applies only while t lies in the guidance interval.

Noise comes from one private CPU generator per run, seeded once with the user's seed
(:func:`noise_stream`) and drawn in the release's order (stage 1, then stage 2 from the same stream):
CUPID's release calls `torch.manual_seed(seed)` once and draws both stages with `torch.randn` on the
CPU, so this reproduces its noise value for value, on every device, without touching the global
generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import Cancelled
from .sparse import SparseTensor

Progress = Callable[[float], None]


@dataclass
class FlowSampler:
    """One sampler configuration; `sample` integrates a model from noise."""

    steps: int = 25
    cfg_strength: float = 0.0
    cfg_interval: Sequence[float] = (0.0, 1.0)
    rescale_t: float = 1.0
    sigma_min: float = 1e-5

    @classmethod
    def from_config(cls, config: dict[str, Any], steps: int | None = None) -> "FlowSampler":
        """From a pipeline.json sampler entry ({"args": {...}, "params": {...}}) or a flat dict."""
        flat = {**config.get("args", {}), **config.get("params", {})} if "params" in config or "args" in config \
            else dict(config)
        known = {k: flat[k] for k in ("steps", "cfg_strength", "cfg_interval", "rescale_t", "sigma_min") if k in flat}
        sampler = cls(**known)
        if steps:
            sampler.steps = int(steps)
        return sampler

    def timesteps(self) -> np.ndarray:
        t = np.linspace(1.0, 0.0, self.steps + 1)
        r = self.rescale_t
        return r * t / (1.0 + (r - 1.0) * t)

    def velocity(self, model: Callable, x: Any, t: float, cond: Any, neg_cond: Any, **kwargs: Any) -> Any:
        t_in = torch.full((_batch(x),), 1000.0 * t, dtype=torch.float32, device=_device(x))
        v = model(x, t_in, cond, **kwargs)
        lo, hi = self.cfg_interval
        if self.cfg_strength and neg_cond is not None and lo <= t <= hi:
            v_neg = model(x, t_in, neg_cond, **kwargs)
            v = _combine(v, v_neg, self.cfg_strength)
        return v

    @torch.no_grad()
    def sample(self, model: Callable, noise: Any, cond: Any, neg_cond: Any = None, *,
               progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
               **kwargs: Any) -> Any:
        x = noise
        ts = self.timesteps()
        for i in range(self.steps):
            if should_cancel is not None and should_cancel():
                raise Cancelled("the job was cancelled")
            t, t_prev = float(ts[i]), float(ts[i + 1])
            v = self.velocity(model, x, t, cond, neg_cond, **kwargs)
            x = _step(x, v, t - t_prev)
            if progress is not None:
                progress((i + 1) / self.steps)
        return x


def noise_stream(seed: int) -> torch.Generator:
    """The private CPU generator of one run, seeded as `torch.manual_seed(seed)` seeds the global one."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def draw_noise(shape: Sequence[int], stream: torch.Generator, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The next standard normal draw of `stream`, made on the CPU in float32 and then moved (the same
    values on every device, and the values `torch.randn(*shape)` gives after `torch.manual_seed`)."""
    return torch.randn(*shape, generator=stream, dtype=torch.float32).to(device=device, dtype=dtype)


def _batch(x: Any) -> int:
    return x.batch_size if isinstance(x, SparseTensor) else x.shape[0]


def _device(x: Any) -> torch.device:
    return x.device


def _combine(v: Any, v_neg: Any, w: float) -> Any:
    if isinstance(v, SparseTensor):
        return v.replace((1 + w) * v.feats - w * v_neg.feats)
    return (1 + w) * v - w * v_neg


def _step(x: Any, v: Any, dt: float) -> Any:
    if isinstance(x, SparseTensor):
        return x.replace(x.feats - dt * v.feats)
    return x - dt * v
