"""`overlay.png`: the reconstruction drawn over the photo through the solved camera.

Why: the quickest visual check of a reconstruction is whether the object, seen through the
recovered camera, sits on the object in the photo. The mesh is rasterised on CPU
(:mod:`cupid.export.raster`), shaded by its vertex colours (or its normals when it has none)
with a head-light Lambert term, blended over the photo, and the silhouette outline drawn on top.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .raster import rasterize_mesh

__all__ = ["OverlayMesh", "render_overlay"]

OverlayMesh = tuple  # (world vertices [V, 3], faces [F, 3], colours [V, 3] or None)


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def render_overlay(photo: np.ndarray, meshes: Sequence[OverlayMesh], K, R, t, *,
                   alpha: float = 0.6, outline_color=(255, 64, 32), outline_px: int = 2,
                   labels: Sequence[str | None] | None = None) -> np.ndarray:
    """Return an RGB uint8 image the size of `photo` with all meshes (world frame) drawn over it.

    The meshes share one z-buffer, so objects occlude each other correctly. `labels` (one per mesh,
    e.g. its fit score) are written above each mesh's silhouette.
    """
    import cv2

    img = np.asarray(photo)
    h, w = img.shape[:2]
    base = img[..., :3].astype(np.float32)
    if not meshes:
        return img[..., :3].astype(np.uint8).copy()
    verts, faces, cols, offset = [], [], [], 0
    for v, f, c in meshes:
        v = np.asarray(v, dtype=np.float64).reshape(-1, 3)
        f = np.asarray(f, dtype=np.int64).reshape(-1, 3)
        verts.append(v)
        faces.append(f + offset)
        cols.append(None if c is None else np.asarray(c, dtype=np.float32)[:, :3])
        offset += v.shape[0]
    V = np.concatenate(verts)
    F = np.concatenate(faces)
    frags = rasterize_mesh(V, F, K, R, t, w, h)
    mask = frags.mask
    if not np.any(mask):
        return base.astype(np.uint8)

    # per-pixel albedo: vertex colours, or a normal-map colour for meshes without colours
    Rm = np.asarray(R, dtype=np.float64).reshape(3, 3)
    fn_world = _face_normals(V, F)
    fn_cam = fn_world @ Rm.T
    has_col = np.concatenate([np.full(v.shape[0], c is not None) for v, c in zip(verts, cols)])
    C = np.concatenate([c if c is not None else np.zeros((v.shape[0], 3), np.float32)
                        for v, c in zip(verts, cols)])
    fid = frags.face_id[mask]
    albedo = np.einsum("nk,nkc->nc", frags.bary[mask], C[F[fid]])
    nrm = fn_cam[fid]
    no_col = ~has_col[F[fid, 0]]
    albedo[no_col] = (0.5 + 0.5 * nrm[no_col] * np.array([1.0, -1.0, -1.0])).astype(np.float32)
    # head-light: the camera looks along +z, so the lit side faces -z (two-sided)
    lambert = np.abs(nrm[:, 2]).astype(np.float32)
    shade = albedo * (0.35 + 0.65 * lambert)[:, None] * 255.0

    out = base.copy()
    out[mask] = (1.0 - alpha) * base[mask] + alpha * shade
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out)
    cv2.drawContours(out, contours, -1, tuple(int(x) for x in outline_color), int(outline_px),
                     lineType=cv2.LINE_AA)
    if labels:
        owner = np.concatenate([np.full(len(f), k) for k, f in enumerate(faces)])
        ids = np.full(mask.shape, -1)
        ids[mask] = owner[frags.face_id[mask]]
        for k, text in enumerate(labels):
            if text:
                _label(out, text, ids == k, outline_color)
    return out


def _label(img: np.ndarray, text: str, region: np.ndarray, color) -> None:
    """`text` on a dark box just above `region`'s bounding box (inside the image)."""
    import cv2

    if not region.any():
        return
    h, w = img.shape[:2]
    ys, xs = np.nonzero(region)
    scale = max(0.4, min(1.2, w / 900))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(xs.min(), 0, max(0, w - tw - 4)))
    y = int(np.clip(ys.min() - 6, th + 4, h - base - 2))
    cv2.rectangle(img, (x, y - th - 4), (x + tw + 4, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x + 2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color), 1,
                cv2.LINE_AA)
