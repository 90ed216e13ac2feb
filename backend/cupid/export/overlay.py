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
        items = [(text, ids == k) for k, text in enumerate(labels) if text]
        draw_labels(out, [(text, region) for text, region in items if region.any()], outline_color)
    return out


Box = tuple  # (x, y, width, height) of a label's dark box, in pixels


def _overlaps(a: Box, b: Box, gap: int = 2) -> bool:
    return (a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap
            and a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap)


def place_labels(sizes: Sequence[tuple[int, int]], spans: Sequence[Box], width: int, height: int) -> list[Box]:
    """Where each label box (`sizes`: width, height) goes: above its object's bounding box (`spans`:
    x, y, width, height), else below it, else over its top, always inside the image and clear of
    the boxes placed before it (the nearest free row when all three are taken). Labels of
    neighbouring objects would otherwise cover one another."""
    placed: list[Box] = []
    for (bw, bh), (x0, y0, sw, sh) in zip(sizes, spans):
        bw, bh = min(bw, width), min(bh, height)
        x = int(np.clip(x0, 0, width - bw))
        tops = [y0 - bh - 2, y0 + sh + 2, y0]
        candidates = [(x, int(np.clip(top, 0, height - bh))) for top in tops]
        free = [c for c in candidates if not any(_overlaps((*c, bw, bh), p) for p in placed)]
        if not free:   # scan every position, nearest to "above the object" first
            first = candidates[0]
            grid = [(cx, cy) for cy in range(0, height - bh + 1) for cx in {x, 0, width - bw}
                    if not any(_overlaps((cx, cy, bw, bh), p) for p in placed)]
            free = sorted(grid, key=lambda c: abs(c[1] - first[1]) + abs(c[0] - first[0])) or [first]
        placed.append((*free[0], bw, bh))
    return placed


def draw_labels(img: np.ndarray, items: Sequence[tuple[str, np.ndarray]], color) -> list[Box]:
    """Each (text, region) as `text` on a dark box by its region (see :func:`place_labels`): the
    text shrinks to fit the image's width. Returns the boxes drawn."""
    import cv2

    h, w = img.shape[:2]
    fonts, sizes, spans = [], [], []
    for text, region in items:
        scale = max(0.4, min(1.2, w / 900))
        while True:
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            if tw + 4 <= w or scale <= 0.25:
                break
            scale *= 0.9
        fonts.append((scale, th))
        sizes.append((tw + 4, th + base + 4))
        ys, xs = np.nonzero(region)
        spans.append((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
    boxes = place_labels(sizes, spans, w, h)
    for (text, _), (scale, th), (x, y, bw, bh) in zip(items, fonts, boxes):
        cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), (0, 0, 0), -1)
        cv2.putText(img, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color), 1,
                    cv2.LINE_AA)
    return boxes
