"""One guided sampler step of each full-size flow network on this machine, against the release's way.

A guided step needs the conditional and the unconditional velocity. The yardstick is the release's way,
measured in the same run: two forwards, float32 weights. Against it, ours: the two passes as one batch
of two (`FlowSampler.batch_guidance`), from the checkpoint's float16 weights kept as stored and cast at
each use (exact; half the memory), and, where asked or where the CPU has bf16 instructions, the torso in
bfloat16. The variants run interleaved (A B C A B C ...) and each keeps its fastest repeat, so a busy
machine slows them alike. A second table times attention alone at the stage-1 shape: q, k, v handed to
SDPA as strided views of the fused projection (the release) or contiguous [B, H, L, C] (ours).

Widths, heads and token counts are the release's (TRELLIS-image-large manifest: 4096 tokens of 1024
channels in stage 1; stage 2 on a 64³ shell of ~19.6k voxels, 1374 DINOv2 tokens as the condition);
`--blocks` transformer blocks instead of 24 (default 4: a step's time scales with the block count, the
printed full-depth estimate adds the rest linearly). Random weights (only speed is measured here; the
tests check the numbers).
Run: .venv/bin/python bench/bench_flow_forward.py [--blocks 4] [--repeats 2] [--dtype auto|bfloat16|...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT)]
MANIFEST = ROOT / "tests" / "fixtures" / "trellis_image_large_manifest.json"
CONFIGS = {"stage 1 (SparseStructureFlowModel)": "ss_flow_img_dit_L_16l8_fp16",
           "stage 2 (SLatFlowModel)": "slat_flow_img_dit_L_64l8p2_fp16"}


def shell_coords(res: int = 64, radius: float = 28.0, half_width: float = 1.0) -> torch.Tensor:
    """A sphere shell's voxels at 64³: a large object's surface (~19.6k voxels)."""
    ax = torch.arange(res, dtype=torch.float32) + 0.5 - res / 2
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    keep = ((g.norm(dim=-1) - radius).abs() < half_width).nonzero()
    return torch.cat([torch.zeros(len(keep), 1, dtype=torch.long), keep], 1).int()


def build(config: str, blocks: int, compute: torch.dtype, keep_low: bool) -> torch.nn.Module:
    """The release's network at `blocks` depth with seeded random weights stored as the release stores
    them (float16 torso), then placed for `compute` the way `cupid.models.load_model` does."""
    from cupid.models import build_model
    from cupid.models.dtype import place_weights
    from cupid.tiny import randomize_weights

    entry = json.loads(MANIFEST.read_text())[config]
    args = dict(entry["args"], num_blocks=blocks)   # use_fp16 as released: the torso is built in float16
    model = build_model(entry["name"], args)
    randomize_weights(model, torch.Generator().manual_seed(0))
    place_weights(model, compute, keep_low=keep_low)
    return model.eval().requires_grad_(False)


def inputs(config: str) -> tuple[Any, torch.Tensor, torch.Tensor, int]:
    from cupid.sparse import SparseTensor

    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 1374, 1024, generator=g)
    if config.startswith("ss_"):
        return torch.randn(1, 8, 16, 16, 16, generator=g), torch.tensor([500.0]), cond, 16 ** 3
    coords = shell_coords()
    return SparseTensor(torch.randn(coords.shape[0], 8, generator=g), coords), torch.tensor([500.0]), cond, \
        coords.shape[0]


def guided_step(model: torch.nn.Module, x: Any, t: torch.Tensor, cond: torch.Tensor, batched: bool) -> Callable:
    """One guided velocity through `FlowSampler.velocity` (guidance on at t = 0.5)."""
    from cupid.sampler import FlowSampler, GuidancePair

    sampler = FlowSampler(steps=1, cfg_strength=3.0, cfg_interval=(0.0, 1.0), batch_guidance=batched)
    neg = torch.zeros_like(cond)
    pair = GuidancePair.build(x, cond, neg, {}) if batched else None
    return lambda: sampler.velocity(model, x, 0.5, cond, neg, pair)


def interleaved(fns: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Fastest of `repeats` interleaved runs of each (after one warm-up run each)."""
    best = {k: float("inf") for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


def param_gb(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 30


def bench_flows(blocks: int, repeats: int, low: torch.dtype | None) -> None:
    print(f"\nOne guided step (conditional + unconditional velocity), {blocks} of 24 blocks; seconds, fastest of "
          f"{repeats}; ratio = yardstick time / this time (>1: faster)\n")
    print("| network | way | weights in memory (GB, 24 blocks) | s | 24 blocks s (est.) | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, config in CONFIGS.items():
        entry = json.loads(MANIFEST.read_text())[config]
        depth = int(entry["args"]["num_blocks"])
        x, t, cond, tokens = inputs(config)
        kinds = {"float32": (torch.float32, False), "stored": (torch.float32, True)}
        ways = {"release: two forwards, float32 weights": ("float32", False),
                "ours: one batch of two, float32 weights": ("float32", True),
                "ours: one batch of two, float16 weights stored": ("stored", True)}
        if low is not None:
            kinds["low"] = (low, True)
            ways[f"ours: one batch of two, {str(low).split('.')[-1]} torso"] = ("low", True)
        # each way at `blocks` and at 1 block: the difference is the cost of blocks - 1 blocks
        deep = {k: build(config, blocks, d, keep) for k, (d, keep) in kinds.items()}
        shallow = {k: build(config, 1, d, keep) for k, (d, keep) in kinds.items()}
        fns = {}
        for way, (kind, batched) in ways.items():
            fns[way] = guided_step(deep[kind], x, t, cond, batched)
            fns[way + " (1 block)"] = guided_step(shallow[kind], x, t, cond, batched)
        times = interleaved(fns, repeats)
        base = None
        for way, (kind, _) in ways.items():
            per_block_s = (times[way] - times[way + " (1 block)"]) / max(blocks - 1, 1)
            full_s = times[way] + per_block_s * (depth - blocks)
            per_block_gb = (param_gb(deep[kind]) - param_gb(shallow[kind])) / max(blocks - 1, 1)
            full_gb = param_gb(deep[kind]) + per_block_gb * (depth - blocks)
            base = base or full_s
            print(f"| {label}, {tokens} tokens | {way} | {full_gb:.2f} | {times[way]:.2f} | {full_s:.1f} | "
                  f"{base / full_s:.2f}× |")
        del deep, shallow, fns


def bench_attention(repeats: int) -> None:
    """SDPA at the stage-1 self-attention shape: strided q, k, v (the release) vs contiguous (ours)."""
    from cupid.modules.attention import scaled_dot_product_attention

    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 4096, 3, 16, 64, generator=g)
    q, k, v = qkv.unbind(2)

    def strided() -> torch.Tensor:
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    times = interleaved({"strided": strided, "contiguous": lambda: scaled_dot_product_attention(q, k, v)}, repeats)
    flops = 4 * 2 * 16 * 4096 * 4096 * 64
    print("\nSelf-attention at the stage-1 shape (batch 2, 4096 tokens, 16 heads of 64), float32\n")
    print("| q, k, v | s | GFLOP/s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for k in times:
        print(f"| {k} | {times[k]:.3f} | {flops / times[k] / 1e9:.0f} | {times['strided'] / times[k]:.2f}× |")


def cpu_bf16() -> bool:
    """Whether the pipeline's automatic dtype is bfloat16 on this CPU."""
    from cupid.models.dtype import resolve_dtype

    return resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=4, help="transformer blocks per network (the release has 24)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="auto", choices=("auto", "none", "bfloat16", "float16"),
                   help="the low-precision torso to time too (auto: bfloat16 where the CPU has bf16 "
                        "instructions, else none)")
    a = p.parse_args()
    low = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(a.dtype)
    if a.dtype == "auto":
        low = torch.bfloat16 if cpu_bf16() else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 instructions: "
          f"{cpu_bf16()}, load {os.getloadavg()[0]:.1f}")
    bench_attention(a.repeats)
    bench_flows(a.blocks, a.repeats, low)


if __name__ == "__main__":
    main()
