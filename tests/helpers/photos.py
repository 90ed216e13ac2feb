"""Synthetic photos of objects with a known colour on every surface point, for the photo-texture tests.

A "photo" here is what a pinhole camera sees of meshes painted with colour fields (functions of the
object-frame point): each pixel takes the field at the surface point its centre sees (exact,
perspective-correct), so a texture that carries the photo re-renders as the photo.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cupid.export.raster import rasterize_mesh
from cupid.geometry import CameraPose, Similarity

Field = Callable[[np.ndarray], np.ndarray]   # object-frame points [N, 3] -> sRGB colours [N, 3] in [0, 1]


def wave_field(wavelength: float, seed: int = 0, amplitude: float = 0.3) -> Field:
    """Smooth, colourful waves of about `wavelength` (object units), different per channel."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = rng.uniform(0.35, 0.65, 3)

    def field(p: np.ndarray) -> np.ndarray:
        return np.clip(base + amplitude * np.sin(2 * np.pi / wavelength * np.asarray(p) @ dirs.T + phase), 0, 1)
    return field


def checker_background(width: int, height: int, cell: int = 6) -> np.ndarray:
    """A loud magenta/green checker: any of it bleeding into a texture shows."""
    yy, xx = np.mgrid[:height, :width]
    on = ((yy // cell + xx // cell) % 2).astype(bool)
    img = np.empty((height, width, 3), np.float64)
    img[on] = (1.0, 0.0, 1.0)
    img[~on] = (0.0, 1.0, 0.2)
    return img


def shoot(objects: Sequence[tuple[np.ndarray, np.ndarray, Similarity, Field]], camera: CameraPose,
          background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 photo [H, W, 3], int ids [H, W]: which object each pixel shows, -1 none) of objects
    (object-frame vertices, faces, placement, colour field) through `camera`, sharing one z-buffer."""
    W, H = camera.width, camera.height
    verts, faces, owner, offset = [], [], [], 0
    for k, (v, f, place, _) in enumerate(objects):
        verts.append(place.apply(np.asarray(v, np.float64)))
        faces.append(np.asarray(f, np.int64) + offset)
        owner.append(np.full(len(f), k))
        offset += len(v)
    V, F = np.concatenate(verts), np.concatenate(faces)
    frags = rasterize_mesh(V, F, camera.K, camera.R, camera.t, W, H)
    img = np.zeros((H, W, 3)) if background is None else np.array(background, np.float64, copy=True)
    ids = np.full((H, W), -1)
    m = frags.mask
    ids[m] = np.concatenate(owner)[frags.face_id[m]]
    world = np.einsum("nk,nkc->nc", frags.bary[m].astype(np.float64), V[F[frags.face_id[m]]])
    col = np.zeros((world.shape[0], 3))
    for k, (_, _, place, field) in enumerate(objects):
        sel = ids[m] == k
        obj = (world[sel] - place.t) @ place.R / place.scale     # world -> object frame
        col[sel] = field(obj)
    img[m] = col
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), ids


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """PSNR (dB, peak 1) of two float images in [0, 1] over the pixels `where` selects."""
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)[where].mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] [N, 3] -> CIE L*a*b* (D65)."""
    c = np.asarray(rgb, np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ M.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def white_balance(rgb: np.ndarray, gains=(1.3, 1.0, 0.75)) -> np.ndarray:
    """sRGB colours with a white-balance shift: per-channel gains on linear light."""
    c = np.asarray(rgb, np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) * np.asarray(gains)
    lin = np.clip(lin, 0, 1)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
