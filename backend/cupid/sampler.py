"""Rectified-flow Euler sampler with classifier-free guidance inside an interval (TRELLIS/CUPID).

Time runs from 1 (noise) to 0 (data) on t' = r·t / (1 + (r − 1)·t); the model is given 1000·t and
predicts the velocity v, and x_{t_prev} = x_t − (t − t_prev)·v. Guidance (1 + w)·v_cond − w·v_uncond
applies only while t lies in the guidance interval. Inside it the conditional and unconditional passes run
as one batch of two (`batch_guidance`, one forward with twice the rows: larger matrix products, each
weight read once); `batch_guidance=False` runs them as two forwards, as the release does.

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
from .sparse import SparseTensor, sparse_cat

Progress = Callable[[float], None]


@dataclass
class FlowSampler:
    """One sampler configuration; `sample` integrates a model from noise."""

    steps: int = 25
    cfg_strength: float = 0.0
    cfg_interval: Sequence[float] = (0.0, 1.0)
    rescale_t: float = 1.0
    sigma_min: float = 1e-5
    batch_guidance: bool = True

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

    def guided(self, t: float, neg_cond: Any) -> bool:
        """Whether the step at time t runs the unconditional pass too."""
        lo, hi = self.cfg_interval
        return bool(self.cfg_strength) and neg_cond is not None and lo <= t <= hi

    def velocity(self, model: Callable, x: Any, t: float, cond: Any, neg_cond: Any,
                 pair: "GuidancePair | None" = None, **kwargs: Any) -> Any:
        """The (guided) velocity at x, t; `pair` (see `GuidancePair`) batches both passes of guidance."""
        t_in = torch.full((_batch(x),), 1000.0 * t, dtype=torch.float32, device=_device(x))
        if not self.guided(t, neg_cond):
            return model(x, t_in, cond, **kwargs)
        if pair is not None:
            v, v_neg = pair.split(model(pair.inputs(x), torch.cat([t_in, t_in]), pair.cond, **pair.kwargs), x)
        else:
            v = model(x, t_in, cond, **kwargs)
            v_neg = model(x, t_in, neg_cond, **kwargs)
        return _combine(v, v_neg, self.cfg_strength)

    @torch.no_grad()
    def sample(self, model: Callable, noise: Any, cond: Any, neg_cond: Any = None, *,
               progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
               **kwargs: Any) -> Any:
        x = noise
        ts = self.timesteps()
        pair = None
        if self.batch_guidance and any(self.guided(float(t), neg_cond) for t in ts[:-1]):
            pair = GuidancePair.build(noise, cond, neg_cond, kwargs)
        for i in range(self.steps):
            if should_cancel is not None and should_cancel():
                raise Cancelled("the job was cancelled")
            t, t_prev = float(ts[i]), float(ts[i + 1])
            v = self.velocity(model, x, t, cond, neg_cond, pair, **kwargs)
            x = _step(x, v, t - t_prev)
            if progress is not None:
                progress((i + 1) / self.steps)
        return x


class GuidancePair:
    """Guidance's two passes as one batch: the conditions stacked once per run (cond first), and for sparse
    latents one paired coordinate set whose tensors share one spatial cache, so neighbour maps and
    down/upsampling bookkeeping are built once per run, as for a single pass."""

    def __init__(self, cond: Any, kwargs: dict[str, Any], template: SparseTensor | None):
        self.cond = cond
        self.kwargs = kwargs
        self._template = template

    @classmethod
    def build(cls, x: Any, cond: Any, neg_cond: Any, kwargs: dict[str, Any]) -> "GuidancePair | None":
        """None when the inputs cannot be stacked (then guidance runs as two forwards)."""
        if not isinstance(x, (torch.Tensor, SparseTensor)):
            return None
        paired = _stack(cond, neg_cond)
        if paired is None:
            return None
        extra = {}
        for k, v in kwargs.items():
            extra[k] = _stack(v, v) if isinstance(v, (torch.Tensor, SparseTensor)) else v
        template = sparse_cat([x, x]) if isinstance(x, SparseTensor) else None
        return cls(paired, extra, template)

    def inputs(self, x: Any) -> Any:
        if self._template is None:
            return torch.cat([x, x])
        return self._template.replace(torch.cat([x.feats, x.feats]))

    @staticmethod
    def split(v: Any, x: Any) -> tuple[Any, Any]:
        """The stacked velocity as the conditional and unconditional ones, on x's rows."""
        if isinstance(v, SparseTensor):
            n = v.feats.shape[0] // 2
            return x.replace(v.feats[:n]), x.replace(v.feats[n:])
        n = v.shape[0] // 2
        return v[:n], v[n:]


def _stack(a: Any, b: Any) -> Any:
    """a and b as one batch (a first): tensors along dim 0, dicts per key; None when they do not stack."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        return sparse_cat([a, b])
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        out = {k: _stack(a[k], b[k]) for k in a}
        return None if any(v is None for v in out.values()) else out
    return None


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
