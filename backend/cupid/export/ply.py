"""Gaussians -> the standard 3D Gaussian Splatting PLY, and back.

Layout (binary little-endian, one `vertex` element, all float32), as read by the common 3DGS
viewers and tools: x, y, z, nx, ny, nz (zeros), f_dc_0..2 (degree-0 SH coefficients),
f_rest_* (higher SH bands, channel-major, only when present), opacity (logit), scale_0..2
(natural log of the standard deviations), rot_0..3 (unit quaternion w, x, y, z).
Positions stay in the object frame (Z-up), unlike TRELLIS' own writer which rotates to Y-up:
the bundle keeps every file in one frame and `matrix_world` places it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError

__all__ = ["GaussiansLike", "GaussianArrays", "gaussians_to_arrays", "write_gaussians_ply",
           "read_gaussians_ply"]

_EPS = 1e-7


@runtime_checkable
class GaussiansLike(Protocol):
    """What the writer needs: activated values, as torch tensors or numpy arrays.
    An optional `features_rest` [N, K, 3] adds the higher SH bands."""

    @property
    def xyz(self) -> Any: ...            # [N, 3] object frame
    @property
    def scaling(self) -> Any: ...        # [N, 3] standard deviations (> 0)
    @property
    def opacity(self) -> Any: ...        # [N, 1] in (0, 1)
    @property
    def rotation(self) -> Any: ...       # [N, 4] quaternion (w, x, y, z)
    @property
    def features_dc(self) -> Any: ...    # [N, 1, 3] SH DC coefficients


@dataclass
class GaussianArrays:
    """Plain numpy view of a Gaussian set with activated values (what `read_gaussians_ply` returns)."""

    xyz: np.ndarray          # float32 [N, 3]
    scaling: np.ndarray      # float32 [N, 3]
    opacity: np.ndarray      # float32 [N, 1]
    rotation: np.ndarray     # float32 [N, 4], unit, w first
    features_dc: np.ndarray  # float32 [N, 1, 3]
    features_rest: np.ndarray | None = None  # float32 [N, K, 3]

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def _np(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"Gaussian {name} contains NaN or infinite values")
    return arr


def gaussians_to_arrays(g: GaussiansLike) -> GaussianArrays:
    """Read and check the activated getters of any Gaussians-like object."""
    for attr in ("xyz", "scaling", "opacity", "rotation", "features_dc"):
        if not hasattr(g, attr):
            raise InputError(f"the Gaussians object has no `{attr}` attribute")
    xyz = _np(g.xyz, "xyz").reshape(-1, 3)
    n = xyz.shape[0]
    scaling = _np(g.scaling, "scaling").reshape(n, 3)
    opacity = _np(g.opacity, "opacity").reshape(n, 1)
    rotation = _np(g.rotation, "rotation").reshape(n, 4)
    dc = _np(g.features_dc, "features_dc").reshape(n, 1, 3)
    rest = getattr(g, "features_rest", None)
    rest = None if rest is None else _np(rest, "features_rest").reshape(n, -1, 3)
    if rest is not None and rest.shape[1] == 0:
        rest = None
    if np.any(scaling <= 0):
        raise InputError("Gaussian scales must be positive")
    norm = np.linalg.norm(rotation, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise InputError("Gaussian rotations contain zero quaternions")
    return GaussianArrays(xyz, scaling, opacity, (rotation / norm).astype(np.float32), dc, rest)


def _fields(n_rest: int) -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_gaussians_ply(path: str | Path, gaussians: GaussiansLike | GaussianArrays) -> Path:
    """Write the standard 3DGS PLY (see module docstring)."""
    from plyfile import PlyData, PlyElement

    g = gaussians if isinstance(gaussians, GaussianArrays) else gaussians_to_arrays(gaussians)
    n = len(g)
    # f_rest is stored channel-major: all coefficients of R, then G, then B
    rest = np.zeros((n, 0), np.float32) if g.features_rest is None else \
        np.transpose(g.features_rest, (0, 2, 1)).reshape(n, -1)
    op = np.clip(g.opacity.astype(np.float64), _EPS, 1 - _EPS)
    cols = [g.xyz, np.zeros((n, 3), np.float32), g.features_dc.reshape(n, 3), rest,
            np.log(op / (1 - op)), np.log(g.scaling.astype(np.float64)), g.rotation]
    data = np.concatenate([np.asarray(c, dtype=np.float32).reshape(n, -1) for c in cols], axis=1)
    names = _fields(rest.shape[1])
    rec = np.empty(n, dtype=[(nm, "<f4") for nm in names])
    for i, nm in enumerate(names):
        rec[nm] = data[:, i]
    path = Path(path)
    PlyData([PlyElement.describe(rec, "vertex")], byte_order="<").write(str(path))
    return path


def read_gaussians_ply(path: str | Path) -> GaussianArrays:
    """Read a 3DGS PLY back into activated values (exp of scales, sigmoid of opacity)."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
        el = ply["vertex"]
    except Exception as exc:  # plyfile raises several types for corrupt files
        raise InputError(f"cannot read Gaussian PLY {path}: {exc}") from exc
    names = [p.name for p in el.properties]
    need = _fields(0)
    missing = [nm for nm in need if nm not in names]
    if missing:
        raise InputError(f"{path} is not a 3DGS PLY: missing {', '.join(missing)}")

    def col(*keys):
        return np.stack([np.asarray(el[k], dtype=np.float32) for k in keys], axis=1)

    n_rest = len([nm for nm in names if nm.startswith("f_rest_")])
    rest = None
    if n_rest:
        if n_rest % 3:
            raise InputError(f"{path}: f_rest count {n_rest} is not a multiple of 3")
        flat = col(*[f"f_rest_{i}" for i in range(n_rest)])
        rest = np.transpose(flat.reshape(-1, 3, n_rest // 3), (0, 2, 1)).copy()
    logit = col("opacity").astype(np.float64)
    return GaussianArrays(
        xyz=col("x", "y", "z"),
        scaling=np.exp(col("scale_0", "scale_1", "scale_2").astype(np.float64)).astype(np.float32),
        opacity=(1.0 / (1.0 + np.exp(-logit))).astype(np.float32),
        rotation=col("rot_0", "rot_1", "rot_2", "rot_3"),
        features_dc=col("f_dc_0", "f_dc_1", "f_dc_2").reshape(-1, 1, 3),
        features_rest=rest,
    )
