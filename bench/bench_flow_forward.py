"""One full-size forward of each flow network on the CPU, random weights, float32 and bfloat16.

Each (model, dtype) runs in its own subprocess so the peak resident memory (ru_maxrss) is its own.
Args come from the TRELLIS-image-large manifest; the image condition is 1×1374×1024 (DINOv2 tokens).
Run: PYTHONPATH=backend:. python bench/bench_flow_forward.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(os.environ.get("CUPID_SHARED", ROOT.parent / "shared")) / "fixtures" / "trellis_image_large_manifest.json"
CONFIGS = {"ss_flow": "ss_flow_img_dit_L_16l8_fp16", "slat_flow": "slat_flow_img_dit_L_64l8p2_fp16"}


def shell_coords(res: int = 64, radius: float = 28.0, half_width: float = 1.0) -> torch.Tensor:
    ax = torch.arange(res, dtype=torch.float32) + 0.5 - res / 2
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    keep = ((g.norm(dim=-1) - radius).abs() < half_width).nonzero()
    return torch.cat([torch.zeros(len(keep), 1, dtype=torch.long), keep], 1).int()


def child(which: str, dtype_name: str) -> None:
    from cupid.models import build_model
    from cupid.sparse import SparseTensor

    entry = json.loads(MANIFEST.read_text())[CONFIGS[which]]
    args = dict(entry["args"], use_fp16=False)
    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    # build without storage, pick the torso dtype, then allocate once: RSS then shows this dtype's footprint
    with torch.device("meta"):
        model = build_model(entry["name"], args)
    model.set_compute_dtype(dtype)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
        if hasattr(model, "pos_emb"):
            from cupid.modules.embedders import AbsolutePositionEmbedder
            g = model.resolution // model.patch_size
            ax = torch.arange(g)
            pos = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
            model.pos_emb.copy_(AbsolutePositionEmbedder(model.model_channels)(pos))
    model.eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cond = torch.randn(1, 1374, 1024)
    t = torch.tensor([500.0])
    if which == "ss_flow":
        x = torch.randn(1, 8, 16, 16, 16)
        tokens = 16 ** 3
    else:
        coords = shell_coords()
        x = SparseTensor(torch.randn(coords.shape[0], 8), coords)
        tokens = coords.shape[0]
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(x, t, cond)
        fwd_s = time.perf_counter() - t0
    feats = out if isinstance(out, torch.Tensor) else out.feats
    assert torch.isfinite(feats).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"model": which, "dtype": dtype_name, "tokens": tokens, "build_s": build_s,
                      "forward_s": fwd_s, "rss_after_build_gb": rss_model, "peak_rss_gb": peak}))


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':>10} {'dtype':>9} {'voxels':>7} {'build s':>8} {'forward s':>10} {'RSS built GB':>13} {'peak GB':>8}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT)]))
    for which in CONFIGS:
        for dtype in ("float32", "bfloat16"):
            res = subprocess.run([sys.executable, __file__, "--child", which, dtype], capture_output=True,
                                 text=True, env=env)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not line:
                print(f"{which} {dtype} failed:\n{res.stderr[-2000:]}")
                continue
            r = json.loads(line[-1])
            print(f"{which:>10} {dtype:>9} {r['tokens']:>7} {r['build_s']:8.1f} {r['forward_s']:10.2f} "
                  f"{r['rss_after_build_gb']:13.2f} {r['peak_rss_gb']:8.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
