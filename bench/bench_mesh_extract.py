"""Peak memory and time of a 256³ FlexiCubes extraction on the CPU (each case in a fresh subprocess).

Cases:
  shell20k   ~20k active cubes at 256³ (a one-voxel sphere shell)
  decoded20k a ~20k-voxel 64³ structure after the mesh decoder's two ×2 subdivisions (~1.2M cubes at 256³),
             i.e. what SLatMeshDecoder hands to the extractor for a typical object
Yardstick: the bytes TRELLIS's dense path allocates for its (res+1)³ / res³ grids alone (vertex attrs,
weights, grid coordinates, cube corner table), computed for the same resolution.

Usage: PYTHONPATH=backend python bench/bench_mesh_extract.py [--threads N]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

RES = 256


def _shell(res: int, radius: float, thickness: float):
    import torch
    ax = torch.arange(res)
    out = []
    for x in range(res):  # slab by slab: never hold a dense res³ index grid
        idx = torch.stack(torch.meshgrid(torch.tensor([x]), ax, ax, indexing="ij"), -1).reshape(-1, 3)
        d = ((idx.float() + 0.5) / res - 0.5).norm(dim=1) - radius
        out.append(idx[d.abs() < thickness / res / 2])
    return torch.cat(out)


def _features(coords, res: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
    m = coords.shape[0]
    feats = torch.randn(m, 101, generator=g)
    feats[:, 8:32] *= 0.1
    for k in range(8):
        p = (coords + corners[k]).float() / res - 0.5
        feats[:, k] = p.norm(dim=1) - 0.3 + 1.0 / res
    return feats


def child(case: str, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    from cupid.representations.mesh import flexicubes_mesh
    if case == "shell20k":
        coords = _shell(RES, 0.3, 0.28)
    else:
        base = _shell(RES // 4, 0.3, 4.3)
        sub = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = (base[:, None, :] * 4 + sub[None]).reshape(-1, 3)
    feats = _features(coords, RES)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    mesh = flexicubes_mesh(coords.int(), feats, RES, use_color=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"case": case, "cubes": coords.shape[0], "input_mb": feats.numel() * 4 / 2**20,
                      "peak_rss_mb": peak / 1024, "rss_before_mb": before / 1024, "seconds": dt,
                      "vertices": mesh.vertices.shape[0], "faces": mesh.faces.shape[0]}))


def dense_bytes(res: int) -> int:
    nv, nc = (res + 1) ** 3, res ** 3
    return nv * 10 * 4 + nc * 21 * 4 + nv * 3 * 8 + nc * 8 * 8 + nv * 3 * 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.threads)
        return
    dense = dense_bytes(RES) / 2**20
    print(f"yardstick: TRELLIS dense grids at {RES}³ alone = {dense:.0f} MB")
    for case in ("shell20k", "decoded20k"):
        out = subprocess.run([sys.executable, __file__, "--child", case, "--threads", str(a.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']:>10}: {r['cubes']:>8} cubes (input {r['input_mb']:.0f} MB) -> {r['vertices']} verts, "
              f"{r['faces']} faces in {r['seconds']:.2f} s; peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(before extraction {r['rss_before_mb']:.0f} MB; peak / dense yardstick = "
              f"{r['peak_rss_mb'] / dense:.2f})")


if __name__ == "__main__":
    main()
