"""Blender scene build of a ~1M-triangle textured mesh: our builder vs Blender's glTF importer.

The mesh: a bumpy torus, 1000 x 500 quads -> 1,000,000 triangles on 501,501 vertices, with a
UV grid (seam columns duplicated), per-vertex colours and a 1024² texture. It is written as a
result bundle by ``cupid.export.write_bundle`` (the mesh handed over as already textured, so it is
not simplified or xatlas-unwrapped) and checked with ``load_bundle``.

Timed, each in a fresh empty scene (``read_factory_settings(use_empty=True)``), best of N:
  ours  ``cupid_blender.scene_builder.build_from_bundle`` -- what the add-on runs on a result:
        reads the object from the bundle's NPZ (the GLB is not read by the add-on), builds the
        mesh + UV map + colour attribute + textured material (texture loaded and packed), plus
        the collection and the camera with the photo as background
  glTF  ``bpy.ops.import_scene.gltf`` on the bundle's GLB (the same mesh, uv and texture)
Both must yield the same triangle count (asserted). A second line splits our time into reading
the bundle (NPZ inflate + checks) and ``create_mesh``.

Run: PYTHONPATH=backend:. python bench/bench_mesh_build.py [--repeat 3] [--nu 1000 --nv 500]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402

from cupid.export import ExportOptions, load_bundle, write_bundle  # noqa: E402
from cupid.geometry import CameraPose  # noqa: E402
from cupid.reconstruction import ReconstructedObject, Reconstruction  # noqa: E402
from cupid.export.mesh import TexturedMesh  # noqa: E402
from cupid_blender import scene_builder as sb  # noqa: E402


def bumpy_torus(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vertices [V,3], faces [2·nu·nv, 3], uv [V,2], colours [V,3]) of a perturbed torus grid.

    The grid has (nu+1)·(nv+1) vertices: the seam row/column is duplicated so the UVs are a
    plain [0,1]² grid (as an unwrapped mesh has seams), all triangles are proper."""
    u = np.linspace(0.0, 1.0, nu + 1)
    v = np.linspace(0.0, 1.0, nv + 1)
    U, Vv = np.meshgrid(u, v, indexing="ij")                       # [nu+1, nv+1]
    a, b = 2 * np.pi * U, 2 * np.pi * Vv
    r = 0.12 * (1.0 + 0.08 * np.sin(13 * a) * np.cos(7 * b) + 0.03 * np.sin(41 * a + 29 * b))
    R = 0.3
    x = (R + r * np.cos(b)) * np.cos(a)
    y = (R + r * np.cos(b)) * np.sin(a)
    z = r * np.sin(b)
    verts = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32)
    uv = np.stack([U, Vv], -1).reshape(-1, 2).astype(np.float32)
    idx = np.arange((nu + 1) * (nv + 1), dtype=np.int32).reshape(nu + 1, nv + 1)
    q00, q10, q01, q11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    faces = np.concatenate([np.stack([q00, q10, q11], -1).reshape(-1, 3),
                            np.stack([q00, q11, q01], -1).reshape(-1, 3)]).astype(np.int32)
    colors = np.clip(0.5 + 0.5 * np.stack([np.cos(a), np.sin(a), np.sin(b)], -1).reshape(-1, 3), 0, 1)
    return verts, faces, uv, colors.astype(np.float32)


def texture_image(size: int) -> np.ndarray:
    """A checker-with-gradient RGB texture (compresses like a real bake would not, but decodes the same)."""
    i = np.arange(size)
    checker = ((i[:, None] // 32 + i[None, :] // 32) % 2).astype(np.float64)
    img = np.stack([checker * 200 + 40 * i[None, :] / size,
                    np.broadcast_to(255 * i[:, None] / size, (size, size)),
                    (1 - checker) * 180 + 60 * i[None, :] / size], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_big_bundle(out: Path, nu: int, nv: int, tex_size: int) -> tuple[Path, int]:
    """A one-object bundle written by write_bundle (mesh passed as already textured, so it is not
    re-simplified or xatlas-unwrapped); returns (dir, faces)."""
    verts, faces, uv, colors = bumpy_torus(nu, nv)
    w, h = 640, 480
    photo = np.full((h, w, 3), 128, np.uint8)
    f = 1.2 * w
    camera = CameraPose([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]],
                        [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [0.0, 0.0, 2.5], w, h)
    mesh = TexturedMesh(verts, faces, colors, uv, texture_image(tex_size))
    obj = ReconstructedObject("object_0", verts, faces, colors, textured=mesh)
    write_bundle(Reconstruction(photo, camera, [obj]), out, ExportOptions(gaussians=False, overlay=False))
    load_bundle(out)  # the bundle is valid by the backend's own checks
    return out, int(len(faces))


def fresh_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def triangles_in_scene() -> int:
    """Triangles of all mesh objects in bpy.data (every polygon must be a triangle)."""
    total = 0
    for me in bpy.data.meshes:
        if me.users == 0:
            continue
        sizes = np.empty(len(me.polygons), np.int32)
        me.polygons.foreach_get("loop_total", sizes)
        assert np.all(sizes == 3), f"mesh {me.name!r} has non-triangle polygons"
        total += len(sizes)
    return total


def run_ours(root: Path) -> tuple[float, int]:
    fresh_scene()
    t0 = time.perf_counter()
    sb.build_from_bundle(root, bpy.context.scene, name="bench")
    dt = time.perf_counter() - t0
    return dt, triangles_in_scene()


def run_gltf(glb: Path) -> tuple[float, int]:
    fresh_scene()
    t0 = time.perf_counter()
    res = bpy.ops.import_scene.gltf(filepath=str(glb))
    dt = time.perf_counter() - t0
    assert res == {"FINISHED"}, f"glTF import failed: {res}"
    return dt, triangles_in_scene()


def run_split(root: Path) -> tuple[float, float]:
    """(read_bundle seconds, create_mesh seconds) of our path, in a fresh scene."""
    fresh_scene()
    t0 = time.perf_counter()
    data = sb.read_bundle(root)
    t1 = time.perf_counter()
    od = data.objects[0]
    sb.create_mesh("split", od.vertices, od.faces, od.uv, od.colors)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest is reported")
    ap.add_argument("--nu", type=int, default=1000, help="quads around the ring")
    ap.add_argument("--nv", type=int, default=500, help="quads around the tube")
    ap.add_argument("--texture", type=int, default=1024, help="texture size in pixels")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="cupid_bench_mesh_") as tmp:
        t0 = time.perf_counter()
        root, n_faces = write_big_bundle(Path(tmp) / "bundle", args.nu, args.nv, args.texture)
        glb = root / "object_0.glb"
        print(f"bundle: {n_faces:,} triangles, {(args.nu + 1) * (args.nv + 1):,} vertices, "
              f"{args.texture}² texture; npz {(root / 'object_0.npz').stat().st_size / 2**20:.1f} MiB, "
              f"glb {glb.stat().st_size / 2**20:.1f} MiB (written in {time.perf_counter() - t0:.1f} s)")

        ours, gltf, reads, builds = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits both
            dt, tri = run_ours(root)
            assert tri == n_faces, f"our builder made {tri} triangles, expected {n_faces}"
            ours.append(dt)
            dt, tri_g = run_gltf(glb)
            assert tri_g == tri, f"glTF importer made {tri_g} triangles, our builder {tri}"
            gltf.append(dt)
            r, b = run_split(root)
            reads.append(r)
            builds.append(b)
        fresh_scene()

    a, g = min(ours), min(gltf)
    print(f"mesh build, {n_faces:,} triangles (best of {args.repeat}): ours {a:.2f} s, "
          f"glTF importer {g:.2f} s, ratio ours/glTF = {a / g:.2f} ({'faster' if a < g else 'SLOWER'})")
    print(f"  ours split: read_bundle (npz) {min(reads):.2f} s + create_mesh {min(builds):.2f} s; "
          f"all runs ours {', '.join(f'{x:.2f}' for x in ours)} s, glTF {', '.join(f'{x:.2f}' for x in gltf)} s")


if __name__ == "__main__":
    main()
