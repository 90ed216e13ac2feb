"""A CPU triangle rasteriser in numpy: z-buffered, vectorised over (triangle, pixel) candidates.

Why: the backend runs without OpenGL/nvdiffrast, yet needs silhouettes and depth maps for
overlays, IoU checks and scene alignment, and a UV-space rasteriser for texture baking.
The work is done per *candidate*: every pixel centre inside a triangle's bounding box. Candidates
are generated for batches of triangles at once (bounded memory), tested with edge functions, and
resolved with a per-pixel depth minimum. Small triangles (the common case for reconstructed
meshes) cost a handful of candidates each; a huge triangle is cut into row strips.

Pixel convention (see ``cupid.geometry``): continuous coordinates, (0, 0) is the top-left corner
of the image, the centre of pixel (row i, column j) is at (j + 0.5, i + 0.5). A pixel is covered
when its centre lies inside (or on the edge of) a triangle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Fragments", "rasterize", "rasterize_mesh", "rasterize_objects", "project_points", "render_silhouette",
           "sample_image",
           "sample_texture", "render_textured"]

# candidates evaluated per batch: bounds peak memory to roughly 100 bytes x this number
_CANDIDATE_BUDGET = 1 << 21
_NEAR = 1e-6


@dataclass
class Fragments:
    """What is visible at each pixel.

    face_id: int32 [H, W], index of the nearest covering triangle, -1 where empty.
    bary: float32 [H, W, 3], barycentric weights of that triangle's vertices (perspective-correct
        when the rasteriser was given per-vertex depth), 0 where empty.
    depth: float32 [H, W], interpolated depth, +inf where empty.
    """

    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0

    def interpolate(self, attrs: np.ndarray, faces: np.ndarray, background: float = 0.0) -> np.ndarray:
        """Per-pixel barycentric interpolation of per-vertex attributes [V, C] -> [H, W, C]."""
        attrs = np.asarray(attrs)
        h, w = self.face_id.shape
        out = np.full((h, w, attrs.shape[1]), background, dtype=np.float32)
        m = self.mask
        tri = np.asarray(faces)[self.face_id[m]]
        b = self.bary[m]
        out[m] = np.einsum("nk,nkc->nc", b, attrs[tri].astype(np.float32))
        return out


def _work_items(x_lo, x_hi, y_lo, y_hi, budget):
    """Split triangles whose box exceeds `budget` candidates into row strips.

    Returns (tri, j0, i0, nx, ny) arrays, one entry per item.
    """
    nx = x_hi - x_lo + 1
    ny = y_hi - y_lo + 1
    tri = np.arange(nx.shape[0])
    big = nx * ny > budget
    if not np.any(big):
        return tri, x_lo, y_lo, nx, ny
    rows_per = np.maximum(1, budget // np.maximum(nx[big], 1))
    n_strips = -(-ny[big] // rows_per)
    b_tri = np.repeat(tri[big], n_strips)
    b_rows = np.repeat(rows_per, n_strips)
    first = np.repeat(np.cumsum(n_strips) - n_strips, n_strips)
    k = np.arange(b_tri.shape[0]) - first
    b_i0 = np.repeat(y_lo[big], n_strips) + k * b_rows
    b_ny = np.minimum(b_rows, np.repeat(y_hi[big], n_strips) - b_i0 + 1)
    keep = ~big
    return (np.concatenate([tri[keep], b_tri]), np.concatenate([x_lo[keep], np.repeat(x_lo[big], n_strips)]),
            np.concatenate([y_lo[keep], b_i0]), np.concatenate([nx[keep], np.repeat(nx[big], n_strips)]),
            np.concatenate([ny[keep], b_ny]))


def rasterize(xy: np.ndarray, faces: np.ndarray, width: int, height: int,
              depth: np.ndarray | None = None, *, budget: int = _CANDIDATE_BUDGET) -> Fragments:
    """Rasterise triangles given in pixel coordinates.

    xy: [V, 2] vertex positions in continuous pixel coordinates (corner convention).
    faces: [F, 3] vertex indices. Triangles of either winding are drawn (no culling).
    depth: optional [V] positive view depth per vertex. With it, the nearest triangle wins each
        pixel, depth is interpolated as 1/z (exact for perspective projections) and barycentrics
        are perspective-correct. Triangles with a vertex at depth <= 0 are skipped (no clipping).
        Without it (e.g. UV-space baking) triangles are assumed not to overlap.
    """
    width, height = int(width), int(height)
    xy = np.asarray(xy, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    face_id = np.full(height * width, -1, dtype=np.int32)
    zbuf = np.full(height * width, np.inf, dtype=np.float32)
    bary = np.zeros((height * width, 3), dtype=np.float32)
    frags = Fragments(face_id.reshape(height, width), bary.reshape(height, width, 3), zbuf.reshape(height, width))
    if faces.shape[0] == 0 or width <= 0 or height <= 0:
        return frags

    inv_z = None
    tri_ok = np.ones(faces.shape[0], dtype=bool)
    if depth is not None:
        z = np.asarray(depth, dtype=np.float64).reshape(-1)
        zt = z[faces]
        tri_ok &= np.all(zt > _NEAR, axis=1)
        inv_z = 1.0 / np.where(z > _NEAR, z, 1.0)
    p = xy[faces]  # [F, 3, 2]
    tri_ok &= np.all(np.isfinite(p), axis=(1, 2))
    area = ((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
            - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
    tri_ok &= np.abs(area) > 1e-12
    lo = np.where(tri_ok[:, None], p.min(axis=1), 0.0)
    hi = np.where(tri_ok[:, None], p.max(axis=1), -1.0)
    # pixel j is a candidate when lo <= j + 0.5 <= hi
    x_lo = np.clip(np.ceil(lo[:, 0] - 0.5), 0, width).astype(np.int64)
    x_hi = np.clip(np.floor(hi[:, 0] - 0.5), -1, width - 1).astype(np.int64)
    y_lo = np.clip(np.ceil(lo[:, 1] - 0.5), 0, height).astype(np.int64)
    y_hi = np.clip(np.floor(hi[:, 1] - 0.5), -1, height - 1).astype(np.int64)
    valid = tri_ok & (x_hi >= x_lo) & (y_hi >= y_lo)
    sel = np.nonzero(valid)[0]
    if sel.size == 0:
        return frags
    it_tri, it_j0, it_i0, it_nx, it_ny = _work_items(x_lo[sel], x_hi[sel], y_lo[sel], y_hi[sel], budget)
    it_tri = sel[it_tri]
    counts = it_nx * it_ny
    # group consecutive items into batches of about `budget` candidates
    csum = np.cumsum(counts)
    batch_of = (csum - 1) // budget
    bounds = np.searchsorted(batch_of, np.arange(batch_of[-1] + 2), side="left")

    inv_area = 1.0 / np.where(valid, area, 1.0)
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        if b1 <= b0:
            continue
        t, j0, i0, nx, cnt = it_tri[b0:b1], it_j0[b0:b1], it_i0[b0:b1], it_nx[b0:b1], counts[b0:b1]
        total = int(cnt.sum())
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        k = np.arange(total, dtype=np.int64) - start
        nxr = np.repeat(nx, cnt)
        col = np.repeat(j0, cnt) + k % nxr
        row = np.repeat(i0, cnt) + k // nxr
        tr = np.repeat(t, cnt)
        px = col + 0.5
        py = row + 0.5
        q = p[tr]
        # edge functions: w0 is opposite vertex 0 (edge v1->v2), etc.
        w0 = (q[:, 2, 0] - q[:, 1, 0]) * (py - q[:, 1, 1]) - (q[:, 2, 1] - q[:, 1, 1]) * (px - q[:, 1, 0])
        w1 = (q[:, 0, 0] - q[:, 2, 0]) * (py - q[:, 2, 1]) - (q[:, 0, 1] - q[:, 2, 1]) * (px - q[:, 2, 0])
        ia = inv_area[tr]
        b0_ = w0 * ia
        b1_ = w1 * ia
        b2_ = 1.0 - b0_ - b1_
        eps = -1e-9
        inside = (b0_ >= eps) & (b1_ >= eps) & (b2_ >= eps)
        if not np.any(inside):
            continue
        tr, col, row = tr[inside], col[inside], row[inside]
        bb = np.stack([b0_[inside], b1_[inside], b2_[inside]], axis=1)
        pix = row * width + col
        if inv_z is not None:
            iz = inv_z[faces[tr]] * bb  # [N, 3]
            s = iz.sum(axis=1)
            zc = (1.0 / s).astype(np.float32)
            bb = iz / s[:, None]
            # per-pixel minimum over this batch and what is already in the buffer
            np.minimum.at(zbuf, pix, zc)
            win = zc <= zbuf[pix]
            pix, tr, bb, zc = pix[win], tr[win], bb[win], zc[win]
        else:
            zbuf[pix] = 0.0
        face_id[pix] = tr.astype(np.int32)
        bary[pix] = bb.astype(np.float32)
    return frags


def project_points(vertices: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV projection of world points: returns (pixel xy [V, 2], depth z_cam [V])."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    cam = v @ np.asarray(R, dtype=np.float64).reshape(3, 3).T + np.asarray(t, dtype=np.float64).reshape(1, 3)
    z = cam[:, 2]
    hom = cam @ np.asarray(K, dtype=np.float64).reshape(3, 3).T
    safe = np.where(np.abs(z) > _NEAR, z, _NEAR)
    return hom[:, :2] / safe[:, None], z


def rasterize_mesh(vertices, faces, K, R, t, width: int, height: int) -> Fragments:
    """Project a world-frame mesh through an OpenCV camera and rasterise it with a z-buffer."""
    xy, z = project_points(vertices, K, R, t)
    return rasterize(xy, faces, width, height, depth=z)


def rasterize_objects(meshes, K, R, t, width: int, height: int) -> tuple[Fragments, np.ndarray, np.ndarray, np.ndarray]:
    """Several world-frame meshes ((vertices [V, 3], faces [F, 3]) pairs) through one camera with one
    z-buffer: (fragments of the merged mesh, its faces [F, 3], which mesh each face is of [F], which mesh
    each pixel shows [H, W], -1 where none)."""
    verts, faces, owner, offset = [], [], [], 0
    for k, (v, f) in enumerate(meshes):
        v = np.asarray(v, np.float64).reshape(-1, 3)
        f = np.asarray(f, np.int64).reshape(-1, 3)
        verts.append(v)
        faces.append(f + offset)
        owner.append(np.full(len(f), k, np.int32))
        offset += len(v)
    h, w = int(height), int(width)
    V = np.concatenate(verts) if verts else np.zeros((0, 3))
    F = np.concatenate(faces) if faces else np.zeros((0, 3), np.int64)
    frags = rasterize_mesh(V, F, K, R, t, w, h)
    face_owner = np.concatenate(owner) if owner else np.zeros(0, np.int32)
    ids = np.full((h, w), -1, np.int32)
    m = frags.mask
    ids[m] = face_owner[frags.face_id[m]]
    return frags, F, face_owner, ids


def render_silhouette(vertices, faces, K, R, t, width: int, height: int) -> np.ndarray:
    """bool [H, W]: pixels whose centre is covered by the mesh seen through (K, R, t)."""
    return rasterize_mesh(vertices, faces, K, R, t, width, height).mask


def sample_image(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an [H, W, C] (or [H, W]) image at continuous pixel coordinates (corner
    convention: the centre of pixel (i, j) is (j + 0.5, i + 0.5)), clamped at the border ->
    float32 [N, C] (or [N]) in the image's own units. Only the four neighbours of each point are
    converted, so a uint8 photo of any size is never copied as floats."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    fx = np.asarray(x, dtype=np.float64).reshape(-1) - 0.5
    fy = np.asarray(y, dtype=np.float64).reshape(-1) - 0.5
    x0 = np.clip(np.floor(fx), 0, w - 1).astype(np.int64)
    y0 = np.clip(np.floor(fy), 0, h - 1).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    ax = np.clip(fx - x0, 0.0, 1.0).astype(np.float32)
    ay = np.clip(fy - y0, 0.0, 1.0).astype(np.float32)
    if img.ndim == 3:
        ax, ay = ax[:, None], ay[:, None]
    top = img[y0, x0].astype(np.float32) * (1 - ax) + img[y0, x1].astype(np.float32) * ax
    bot = img[y1, x0].astype(np.float32) * (1 - ax) + img[y1, x1].astype(np.float32) * ax
    return top * (1 - ay) + bot * ay


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a uint8 texture at uv (v up) -> float [N, 3] in [0, 1]."""
    h, w = np.asarray(texture).shape[:2]
    uv = np.asarray(uv, dtype=np.float64)
    return sample_image(texture, uv[:, 0] * w, (1.0 - uv[:, 1]) * h).astype(np.float64) / 255.0


def render_textured(meshes, K, R, t, width: int, height: int, background=(0.0, 0.0, 0.0)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Textured meshes seen through an OpenCV camera, sharing one z-buffer: (float32 [H, W, 3] in [0, 1],
    int32 [H, W] index of the mesh seen at each pixel, -1 where none). `meshes` are (world vertices
    [V, 3], faces [F, 3], uv [V, 2] (v up), uint8 texture [S, S, 3]) tuples. Each pixel takes its
    texture at the perspective-correct uv of its centre (bilinear): what a renderer without lighting
    shows, so a texture that reproduces the photo re-renders as the photo."""
    h, w = int(height), int(width)
    image = np.empty((h, w, 3), np.float32)
    image[:] = np.asarray(background, np.float32)
    if not meshes:
        return image, np.full((h, w), -1, np.int32)
    frags, F, _, ids = rasterize_objects([(v, f) for v, f, _, _ in meshes], K, R, t, w, h)
    m = frags.mask
    uv_all = np.concatenate([np.asarray(uv, np.float64).reshape(-1, 2) for _, _, uv, _ in meshes])
    uv_px = np.einsum("nk,nkc->nc", frags.bary[m].astype(np.float64), uv_all[F[frags.face_id[m]]])
    colour = np.empty((uv_px.shape[0], 3), np.float32)
    who = ids[m]
    for k, (_, _, _, texture) in enumerate(meshes):
        sel = who == k
        if np.any(sel):
            colour[sel] = sample_texture(texture, uv_px[sel])
    image[m] = colour
    return image, ids
