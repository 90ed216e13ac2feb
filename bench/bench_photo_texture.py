"""The photo texture at its largest: a 4000 × 3000 photo, a 20k-face object filling much of it, so the
texture grows to the 4096² cap. Times the texturing step of the export against the plain bake of
the generated colours at the same size (the yardstick: what every export did before).

Timed (best of N, wall and this process's CPU seconds, which a busy shared machine inflates less;
numpy/OpenCV use what cores they find):
  plain   `bake_texture` at the size the photo texture chose (UV rasteriser + vertex colours + seams)
  photo   `texture_objects` with the photo texture on: z-buffer (capped at 2048 px), size choice,
          UV rasteriser, projection, colour transfer, the three textures with their seams
Both start from the same unwrapped mesh (xatlas is not timed: it does not depend on the photo).

Run: PYTHONPATH=backend python bench/bench_photo_texture.py [--repeat 2] [--faces 20000] [--max 4096]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from cupid.export.mesh import bake_texture, postprocess_mesh  # noqa: E402
from cupid.export.texturing import texture_objects  # noqa: E402
from cupid.geometry import CameraPose, Similarity  # noqa: E402


def blob(faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bumpy sphere of about `faces` triangles with colourful vertex colours."""
    import trimesh

    sub = max(1, int(round(np.log(faces / 20) / np.log(4))))
    m = trimesh.creation.icosphere(subdivisions=sub, radius=0.4)
    v = m.vertices * (1 + 0.06 * np.sin(9 * m.vertices[:, :1]) * np.cos(7 * m.vertices[:, 1:2]))
    return v, m.faces, np.clip(0.5 + 0.4 * np.sin(6 * v), 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--faces", type=int, default=20_000)
    ap.add_argument("--max", type=int, default=4096, help="max_texture_size")
    args = ap.parse_args()

    W, H = 4000, 3000
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    K = np.array([[3600.0, 0, W / 2], [0, 3600.0, H / 2], [0, 0, 1]])
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])        # looks along +y, z up
    cam = CameraPose(K, R, np.array([0.0, 0.0, 1.6]), W, H)
    v, f, c = blob(args.faces)
    tm = postprocess_mesh(v, f, c, target_faces=None, texture_size=1024, bake=False)
    xy = (v @ R.T + cam.t) @ K.T
    mask = np.zeros((H, W), np.float32)
    import cv2
    hull = cv2.convexHull((xy[:, :2] / xy[:, 2:]).astype(np.float32))
    cv2.fillConvexPoly(mask, hull.astype(np.int32), 1.0)
    place = Similarity(1.0, np.eye(3), np.zeros(3))
    print(f"mesh: {len(tm.faces)} faces; photo {W}x{H}; object mask {int(mask.sum())} px")

    def best(fn) -> tuple[float, float, object]:
        """(best wall seconds, best CPU seconds of this process, the last result)."""
        wall = cpu = np.inf
        result = None
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        return wall, cpu, result

    photo_wall, photo_cpu, out = best(lambda: texture_objects(photo, cam, [tm], [place], [mask], texture_size=1024,
                                                              max_texture_size=args.max))
    size = out[0].info["texture_size"]
    plain_wall, plain_cpu, _ = best(lambda: bake_texture(tm.uv, tm.faces, tm.colors, texture_size=size))
    info = out[0].info["photo_texture"]
    print(f"texture {size}²: {info['seen_texels']} texels from the photo, "
          f"{info['texels_per_pixel']:.2f} texels per photo pixel of the {info['seen_pixels']} it covers")
    print(f"plain bake  {plain_wall:6.2f} s wall  {plain_cpu:6.2f} s CPU")
    print(f"photo tex   {photo_wall:6.2f} s wall  {photo_cpu:6.2f} s CPU   "
          f"({photo_wall / plain_wall:.2f}x / {photo_cpu / plain_cpu:.2f}x the plain bake)")


if __name__ == "__main__":
    main()
