"""Texels as points of the surface: a rasteriser in UV space that tells, for every texel of a
texture, which triangle it lies on and where (barycentric weights).

Why: baking (vertex colours -> texture) and projecting the photo onto the texture both need the
surface point behind each texel. The UV layout maps every triangle affinely onto its chart, so
barycentric weights found in UV space interpolate positions, normals and colours of the surface
exactly. Only covered texels are kept (flat arrays), so a 4096² texture costs memory in
proportion to what its charts cover.

Texel (row i, column j) of an S×S texture has its centre at uv = ((j + 0.5)/S, 1 - (i + 0.5)/S)
(v up, row 0 at the top, as the bundle's PNGs are stored).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raster import rasterize

__all__ = ["TexelMap", "texel_map", "dilate", "finish_texture"]


@dataclass
class TexelMap:
    """The covered texels of an S×S texture: flat index (row·S + column), triangle and barycentric
    weights of each."""

    size: int
    index: np.ndarray   # int64 [N]
    face: np.ndarray    # int32 [N]
    bary: np.ndarray    # float32 [N, 3]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def interpolate(self, attrs: np.ndarray, faces: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-vertex attributes [V, C] at the texels (or at the texels `rows` selects) -> float32 [N, C]."""
        attrs = np.asarray(attrs, dtype=np.float32)
        face, bary = (self.face, self.bary) if rows is None else (self.face[rows], self.bary[rows])
        corner = attrs[np.asarray(faces)]          # [F, 3, C]: one gather per texel, not three
        per = corner.reshape(len(corner), -1)[face].reshape(len(face), 3, -1)
        return np.einsum("nk,nkc->nc", bary, per)

    def covered(self) -> np.ndarray:
        """bool [S, S]: the texels some triangle covers."""
        out = np.zeros(self.size * self.size, dtype=bool)
        out[self.index] = True
        return out.reshape(self.size, self.size)

    def image(self, values: np.ndarray, background: float = 0.0) -> np.ndarray:
        """Per-texel values [N, C] (or [N]) laid out as a float32 [S, S, C] (or [S, S]) image."""
        values = np.asarray(values, dtype=np.float32)
        out = np.full((self.size * self.size,) + values.shape[1:], background, dtype=np.float32)
        out[self.index] = values
        return out.reshape((self.size, self.size) + values.shape[1:])

    def gather(self, image: np.ndarray) -> np.ndarray:
        """The covered texels' values of an [S, S, ...] image -> [N, ...]."""
        img = np.asarray(image)
        return img.reshape((self.size * self.size,) + img.shape[2:])[self.index]


def texel_map(uv: np.ndarray, faces: np.ndarray, size: int) -> TexelMap:
    """Rasterise the UV layout (uv [V, 2] in [0, 1], v up; faces [F, 3]) at `size`² texels."""
    s = int(size)
    uv = np.asarray(uv, dtype=np.float64)
    xy = np.stack([uv[:, 0] * s, (1.0 - uv[:, 1]) * s], axis=1)
    frags = rasterize(xy, faces, s, s)
    index = np.flatnonzero(frags.face_id.reshape(-1) >= 0)
    return TexelMap(s, index, frags.face_id.reshape(-1)[index], frags.bary.reshape(-1, 3)[index])


def dilate(img: np.ndarray, mask: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the covered region by `iterations` texels, each new texel taking the mean of its
    covered 3x3 neighbours, so bilinear/mipmapped lookups near seams never fetch background.
    `img` is [S, S] or [S, S, C] of any dtype (integers are rounded); only the growing band is
    touched, so a 4096² texture costs no full-size float copies. Returns (image, grown mask)."""
    import cv2

    img = np.asarray(img)
    rows, cols = img.shape[:2]
    flat = img.reshape(rows * cols, -1).copy()
    m = np.asarray(mask, dtype=bool).reshape(-1).copy()
    for _ in range(int(iterations)):
        near = cv2.dilate(m.reshape(rows, cols).view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        idx = np.flatnonzero(near.reshape(-1) & ~m)
        if idx.size == 0:
            break
        r, c = np.divmod(idx, cols)
        acc = np.zeros((idx.size, flat.shape[1]), np.float32)
        cnt = np.zeros(idx.size, np.float32)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr == 0 and dc == 0:
                    continue
                rr, cc = r + dr, c + dc
                j = np.where((rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols), rr * cols + cc, 0)
                take = np.flatnonzero((rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols) & m[j])
                acc[take] += flat[j[take]]
                cnt[take] += 1.0
        mean = acc / cnt[:, None]
        flat[idx] = np.round(mean) if np.issubdtype(flat.dtype, np.integer) else mean
        m[idx] = True
    return flat.reshape(img.shape), m.reshape(rows, cols)


def finish_texture(img: np.ndarray, covered: np.ndarray, dilate_texels: int = 8,
                   background=(0.5, 0.5, 0.5)) -> np.ndarray:
    """A float [S, S, C] texture in [0, 1] with its seams dilated and the rest `background`
    -> uint8 [S, S, C]."""
    img, grown = dilate(img, covered, dilate_texels)
    img[~grown] = np.asarray(background, dtype=np.float32)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
