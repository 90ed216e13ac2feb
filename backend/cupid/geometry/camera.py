"""Camera conventions, the camera container, projection and UV cubes (numpy only).

Conventions (authoritative for the whole project)
-------------------------------------------------
Object frame
    The sparse-structure grid has ``res = 64`` voxels per axis over the cube [-0.5, 0.5]³.
    Voxel index ``i`` (per axis) has its centre at ``(i + 0.5) / res - 0.5``. Objects are Z-up.
Camera (OpenCV)
    ``x_cam = R @ x + t``; a point is in front of the camera when ``z_cam > 0``;
    ``pixel = (K @ x_cam) / z_cam`` (first two entries). K is in pixels of the image the uv refer to
    (the crop while solving, the original photo after :meth:`CameraPose.de_crop`).
Pixels and uv
    Pixel coordinates are continuous: (0, 0) is the top-left CORNER of the image, (W, H) the
    bottom-right corner, so the centre of pixel column j is at x = j + 0.5.
    uv are normalised image coordinates: ``u`` right, ``v`` down, ``pixel = (u * W, v * H)``;
    the image covers [0, 1]². ``image_size`` is always ``(W, H)``.
Similarity
    ``dst = scale * R @ src + t`` with ``R`` a proper rotation (det +1), ``scale > 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ._util import _as_points, _image_size

GRID_RES = 64


@dataclass
class CameraPose:
    """An OpenCV pinhole camera with the size of the image its K refers to.

    ``K`` 3×3 in pixels (K[2,2] = 1), ``R`` 3×3 rotation, ``t`` (3,), ``width``/``height`` in pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def projection_matrix(self) -> np.ndarray:
        """P = K [R | t] (3×4), mapping homogeneous object points to homogeneous pixels."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)

    def camera_center(self) -> np.ndarray:
        """Camera centre in the object/world frame: C = -Rᵀ t."""
        return -self.R.T @ self.t

    def project(self, points: Any) -> np.ndarray:
        """uv of object-frame points in this camera's image (see :func:`project`)."""
        return project(points, self.K, self.R, self.t, self.image_size)

    def de_crop(self, scale: float, offset: Sequence[float],
                image_size: Sequence[int] | None = None) -> "CameraPose":
        """Re-express this camera, solved in a crop, in the pixels of the original photo.

        The crop is related to the original photo by ``p_orig = scale * p_crop + offset``
        (continuous pixel coordinates, corner convention): ``offset = (x_off, y_off)`` is where
        the crop's top-left corner lies in the original photo, ``scale`` is how many original
        pixels one crop pixel spans (crop side in the photo / crop side in pixels). Hence
        ``fx' = s·fx, fy' = s·fy, cx' = s·cx + x_off, cy' = s·cy + y_off``; R and t are unchanged.
        ``image_size`` is the original photo's (W, H); if omitted, the size the crop covers in
        the photo (``round(scale * W_crop)``, ``round(scale * H_crop)``) is used.
        """
        s = float(scale)
        if not (s > 0 and np.isfinite(s)):
            raise InputError(f"crop scale must be positive, got {scale!r}")
        ox, oy = float(offset[0]), float(offset[1])
        A = np.array([[s, 0.0, ox], [0.0, s, oy], [0.0, 0.0, 1.0]])
        if image_size is None:
            w, h = int(round(s * self.width)), int(round(s * self.height))
        else:
            w, h = int(image_size[0]), int(image_size[1])
        return CameraPose(A @ self.K, self.R.copy(), self.t.copy(), w, h)

    def in_crop(self, offset: Sequence[float], size: float) -> "CameraPose":
        """This camera (in the photo's pixels) seen in a square crop of side `size` whose top-left
        corner is at `offset`: the inverse of ``de_crop(1.0, offset)``."""
        A_inv = np.array([[1.0, 0.0, -float(offset[0])], [0.0, 1.0, -float(offset[1])], [0.0, 0.0, 1.0]])
        side = int(round(float(size)))
        return CameraPose(A_inv @ self.K, self.R.copy(), self.t.copy(), side, side)

    def in_moved_world(self, world: Any) -> "CameraPose":
        """This camera after its whole world moved by the similarity ``x' = s·R_w·x + t_w``
        (a :class:`~cupid.geometry.Similarity`): every point keeps its pixel. The camera frame is
        scaled with the world (a pinhole image does not change when everything it sees, the camera
        included, is scaled about the camera), so ``R' = R·R_wᵀ`` and ``t' = s·t − R'·t_w``."""
        Rw = np.asarray(world.R, dtype=np.float64)
        R = self.R @ Rw.T
        return CameraPose(self.K.copy(), R, float(world.scale) * self.t - R @ np.asarray(world.t, np.float64),
                          self.width, self.height)

    def in_object_frame(self, placement: Any) -> "CameraPose":
        """The same camera seen from an object's own frame, given its placement (object -> this
        camera's world): the inverse of :meth:`in_moved_world` with the placement as the move."""
        return self.in_moved_world(placement.inverse())

    def to_dict(self) -> dict:
        """JSON-ready dict in the ``scene.json`` camera layout (plus width/height)."""
        return {
            "convention": "opencv",
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], width: int | None = None,
                  height: int | None = None) -> "CameraPose":
        """Inverse of :meth:`to_dict`; width/height may come from the arguments (scene.json keeps
        them under ``image``)."""
        conv = data.get("convention", "opencv")
        if conv != "opencv":
            raise InputError(f"unsupported camera convention {conv!r} (expected 'opencv')")
        w = data.get("width", width)
        h = data.get("height", height)
        if w is None or h is None:
            raise InputError("camera dict has no width/height and none were given")
        parts = []
        for key, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            if key not in data:
                raise InputError(f"malformed camera dict: no {key!r}")
            try:   # a value that is not numbers ({} is a TypeError) is named, never quoted
                part = np.array(data[key], float)
            except (TypeError, ValueError):
                part = None
            if part is None or part.shape != shape:
                raise InputError(f"camera {key} must be {'a 3x3 matrix' if len(shape) == 2 else '3 numbers'}")
            parts.append(part)
        try:
            return cls(*parts, int(w), int(h))
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed camera width/height: {type(exc).__name__}") from None


def check_rotation(R: Any, what: str = "R") -> np.ndarray:
    """R as a 3×3 float array, or InputError when it is not a proper rotation (orthonormal, det +1)."""
    try:
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a 3x3 matrix: {exc}") from exc
    if not np.all(np.isfinite(R)) or np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise InputError(f"{what} is not a rotation matrix (orthonormal, det +1)")
    return R


def validate_camera(camera: CameraPose) -> CameraPose:
    """The camera itself, or InputError naming what is wrong: non-finite values, a singular or
    non-pinhole K (K[2] must be (0, 0, 1), fx and fy positive), a non-rotation R, an empty image."""
    K, t = camera.K, camera.t
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(t))):
        raise InputError("camera contains NaN or infinite values")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9) or not (K[0, 0] > 0 and K[1, 1] > 0) \
            or abs(np.linalg.det(K)) < 1e-12:
        raise InputError("camera K is singular or not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                         "with positive fx, fy")
    check_rotation(camera.R, "camera R")
    if camera.width < 1 or camera.height < 1:
        raise InputError(f"camera image size must be positive, got {camera.width}x{camera.height}")
    return camera


# --------------------------------------------------------------------------------------------
# projection and UV cubes
# --------------------------------------------------------------------------------------------

def project(points: Any, K: Any, R: Any, t: Any, image_size: Sequence[float],
            return_depth: bool = False):
    """Project object-frame points (N, 3) to uv (N, 2).

    Points with ``z_cam <= 0`` (at or behind the camera) get NaN uv. With ``return_depth`` the
    camera-frame depth ``z_cam`` (N,) is returned as well.
    """
    pts = _as_points(points, 3, "points")
    w, h = _image_size(image_size)
    K = np.asarray(K, float)
    R = np.asarray(R, float)
    t = np.asarray(t, float).reshape(3)
    xc = pts @ R.T + t
    z = xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = xc @ K.T
        uv = pix[:, :2] / pix[:, 2:3] / np.array([w, h])
    uv[~(z > 0)] = np.nan
    return (uv, z) if return_depth else uv


def voxel_centers(indices: Any, res: int = GRID_RES) -> np.ndarray:
    """Object-frame centres (N, 3) of integer voxel indices (N, 3): (i + 0.5) / res - 0.5."""
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise InputError(f"voxel indices must have shape (N, 3), got {idx.shape}")
    return (idx.astype(np.float64) + 0.5) / res - 0.5


def _active_indices(occupancy: Any) -> np.ndarray:
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or not (occ.shape[0] == occ.shape[1] == occ.shape[2]):
        raise InputError(f"occupancy must be a cubic (res, res, res) grid, got {occ.shape}")
    return np.argwhere(occ > 0)


def uv_cube(occupancy: Any, K: Any, R: Any, t: Any, image_size: Sequence[float],
            clip: bool = False) -> np.ndarray:
    """UV cube (res, res, res, 2) float32: the uv of every active voxel centre, 0 elsewhere.

    ``occupancy`` is a (res, res, res) grid; voxels with a value > 0 are active. Every active
    voxel must lie in front of the camera (InputError otherwise). With ``clip`` the uv are
    clamped to [0, 1] (CUPID's stage-2 conditioning clamps them).
    """
    idx = _active_indices(occupancy)
    res = np.asarray(occupancy).shape[0]
    cube = np.zeros((res, res, res, 2), dtype=np.float32)
    if len(idx) == 0:
        return cube
    uv, z = project(voxel_centers(idx, res), K, R, t, image_size, return_depth=True)
    if np.any(z <= 0):
        raise InputError(f"{int(np.sum(z <= 0))} active voxels lie behind the camera")
    if clip:
        uv = np.clip(uv, 0.0, 1.0)
    cube[idx[:, 0], idx[:, 1], idx[:, 2]] = uv
    return cube


def uncrop_uv(uv: Any, scale: float, offset: Sequence[float], crop_size: Sequence[float],
              image_size: Sequence[float]) -> np.ndarray:
    """uv in a crop -> uv in the original photo, with the crop transform of
    :meth:`CameraPose.de_crop` (``p_orig = scale * p_crop + offset``, pixels, corner convention)."""
    uv = np.asarray(uv, dtype=np.float64)
    cw, ch = _image_size(crop_size)
    w, h = _image_size(image_size)
    px = uv * np.array([cw, ch]) * float(scale) + np.asarray(offset, dtype=np.float64)
    return px / np.array([w, h])

