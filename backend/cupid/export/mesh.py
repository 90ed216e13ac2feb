"""Mesh post-processing: clean, simplify, UV-unwrap and bake a colour texture, all on CPU.

Why this differs from TRELLIS: TRELLIS bakes its texture by rendering the Gaussians from many
views with nvdiffrast and optimising the texture. We have no GPU rasteriser here, so the texture
is baked from the mesh decoder's per-vertex colours instead: every texel is mapped back to a
point on the (simplified) surface through the UV layout and takes the barycentric interpolation
of the vertex colours there. This loses detail finer than the simplified mesh's vertex spacing,
but it is deterministic, fast, and needs only numpy.

Input frame: object frame (Z-up, within [-0.5, 0.5]³); nothing here changes the frame.
UV convention of the result: v points up (OpenGL/Blender); texel row = (1 - v) * size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .raster import sample_texture
from .texels import finish_texture, texel_map

__all__ = ["TexturedMesh", "clean_mesh", "simplify_mesh", "unwrap_uv", "bake_texture",
           "sample_texture", "postprocess_mesh"]


@dataclass
class TexturedMesh:
    """A mesh ready to export. uv/texture may be None when unwrapping was skipped."""

    vertices: np.ndarray          # float32 [V, 3]
    faces: np.ndarray             # int32 [F, 3]
    colors: np.ndarray            # float32 [V, 3] in [0, 1]
    uv: np.ndarray | None = None  # float32 [V, 2] in [0, 1], v up
    texture: np.ndarray | None = None  # uint8 [S, S, 3], row 0 = top (v = 1)


def as_numpy(x):
    """numpy view of an array-like, including torch tensors on any device (detached)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_mesh(vertices, faces, colors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = as_numpy(vertices).astype(np.float64)
    f = as_numpy(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"mesh vertices must have shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"mesh faces must have shape (F, 3), got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"mesh faces must be integers, got {f.dtype}")
    if not np.all(np.isfinite(v)):
        raise InputError("mesh vertices contain NaN or infinite values")
    if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
        raise InputError("mesh faces reference vertices that do not exist")
    if colors is None:
        c = np.full((v.shape[0], 3), 0.8)
    else:
        c = as_numpy(colors).astype(np.float64)
        if c.ndim != 2 or c.shape[0] != v.shape[0] or c.shape[1] < 3:
            raise InputError(f"vertex colours must have shape (V, 3) with V={v.shape[0]}, got {c.shape}")
        c = np.clip(np.nan_to_num(c[:, :3]), 0.0, 1.0)
    return v, f.astype(np.int64), c


def clean_mesh(vertices, faces, colors=None, *, tol: float = 1e-7
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge vertices closer than `tol` (averaging their colours), drop degenerate, duplicate
    faces and unreferenced vertices. Returns float64 vertices, int64 faces, float64 colours."""
    v, f, c = _check_mesh(vertices, faces, colors)
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise InputError("the mesh is empty (no vertices or no faces)")
    key = np.round(v / tol).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    n = first.shape[0]
    cnt = np.bincount(inv, minlength=n).astype(np.float64)
    vm = np.stack([np.bincount(inv, v[:, k], n) for k in range(3)], 1) / cnt[:, None]
    cm = np.stack([np.bincount(inv, c[:, k], n) for k in range(3)], 1) / cnt[:, None]
    f = inv[f]
    # degenerate: repeated index or (numerically) zero area
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    cross = np.cross(vm[f[:, 1]] - vm[f[:, 0]], vm[f[:, 2]] - vm[f[:, 0]])
    f = f[np.linalg.norm(cross, axis=1) > 1e-14]
    # duplicates regardless of rotation/orientation: keep the first occurrence
    _, keep = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(keep)]
    if f.shape[0] == 0:
        raise InputError("the mesh has no non-degenerate faces")
    used = np.zeros(n, dtype=bool)
    used[f.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return vm[used], remap[f], cm[used]


def simplify_mesh(vertices, faces, colors, *, target_faces: int | None = None,
                  ratio: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) to `target_faces` or to `ratio` of the faces kept.

    Colours are carried over by nearest original vertex: the decimator moves vertices to
    quadric-optimal positions, which stay close to the original surface.
    """
    v, f, c = _check_mesh(vertices, faces, colors)
    n_faces = f.shape[0]
    if target_faces is None and ratio is None:
        return v, f, c
    if target_faces is None:
        if not 0.0 < float(ratio) <= 1.0:
            raise InputError(f"simplification ratio must be in (0, 1], got {ratio}")
        target_faces = int(round(n_faces * float(ratio)))
    target_faces = int(target_faces)
    if target_faces < 4:
        raise InputError(f"target face count must be at least 4, got {target_faces}")
    if target_faces >= n_faces:
        return v, f, c
    import fast_simplification
    from scipy.spatial import cKDTree

    vs, fs = fast_simplification.simplify(v.astype(np.float32), f.astype(np.int32),
                                          target_count=target_faces)
    vs = np.asarray(vs, dtype=np.float64)
    fs = np.asarray(fs, dtype=np.int64)
    _, idx = cKDTree(v).query(vs, k=1)
    return vs, fs, c[idx]


def unwrap_uv(vertices, faces, *, texture_size: int = 1024, padding: int = 4,
              chart_iterations: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas parametrisation. Returns (vmapping [V'] into the input vertices, faces [F, 3] into
    the new vertices, uv [V', 2] in [0, 1] with v up). Seams split vertices, hence vmapping.

    Chart computation dominates the cost (about 0.1 ms per face per iteration on one core);
    `chart_iterations=0` halves it at slightly less regular charts."""
    import xatlas

    v = np.ascontiguousarray(vertices, dtype=np.float32)
    f = np.ascontiguousarray(faces, dtype=np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    chart = xatlas.ChartOptions()
    chart.max_iterations = int(chart_iterations)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    pack.rotate_charts = True
    atlas.generate(chart_options=chart, pack_options=pack)
    vmap, idx, uv = atlas[0]
    return (np.asarray(vmap, dtype=np.int64), np.asarray(idx, dtype=np.int64),
            np.asarray(uv, dtype=np.float64))


def bake_texture(uv, faces, colors, *, texture_size: int = 1024, dilate: int = 8,
                 background=(0.5, 0.5, 0.5)) -> np.ndarray:
    """Rasterise the mesh in UV space and interpolate vertex colours per texel -> uint8 [S, S, 3].

    Texel (row i, col j) has its centre at uv = ((j + .5)/S, 1 - (i + .5)/S).
    """
    texels = texel_map(uv, faces, texture_size)
    img = texels.image(texels.interpolate(colors, faces))
    return finish_texture(img, texels.covered(), dilate, background)


def postprocess_mesh(vertices, faces, colors=None, *, target_faces: int | None = 20_000,
                     ratio: float | None = None, texture_size: int = 1024, unwrap: bool = True,
                     dilate: int = 8, chart_iterations: int = 1, bake: bool = True) -> TexturedMesh:
    """clean -> simplify -> (xatlas UVs -> baked texture). The full export path for one object.
    `bake=False` stops after the UVs (texture None): the photo texture bakes at a size of its own."""
    v, f, c = clean_mesh(vertices, faces, colors)
    if target_faces is not None or ratio is not None:
        v, f, c = simplify_mesh(v, f, c, target_faces=target_faces if ratio is None else None, ratio=ratio)
        v, f, c = clean_mesh(v, f, c)
    if not unwrap:
        return TexturedMesh(v.astype(np.float32), f.astype(np.int32), c.astype(np.float32))
    vmap, fu, uv = unwrap_uv(v, f, texture_size=texture_size, chart_iterations=chart_iterations)
    cu = c[vmap]
    tex = bake_texture(uv, fu, cu, texture_size=texture_size, dilate=dilate) if bake else None
    return TexturedMesh(v[vmap].astype(np.float32), fu.astype(np.int32), cu.astype(np.float32),
                        uv.astype(np.float32), tex)
