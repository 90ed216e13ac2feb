"""Stage 1 output path: occupancy and UV-cube logits -> active voxels, 3D-2D pairs and the camera.

Occupancy is TRELLIS's: decoder logits > 0. The UV decoder's channels are [in-image flag, u, v];
uv = sigmoid(u, v) at the voxels that carry uv. As in CUPID, those are the occupied voxels, with the
threshold lowered in steps until at least `min_uv_voxels` are active, so a thin shape still gives
enough pairs. `pose_from_structure` is everything after the flow, so a test can feed a true
occupancy and UV cube through exactly this code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import config
from ..errors import CupidError, InputError
from ..geometry import PNP_METHODS, CameraPose, CameraSolution, solve_camera, voxel_centers

__all__ = ["PNP_METHODS", "StructureResult", "decode_structure", "structure_from_cubes", "pose_from_structure",
           "voxel_uvs"]


@dataclass
class StructureResult:
    """Decoded stage-1 output for one object (grid resolution `res`)."""

    occupancy: np.ndarray    # (res, res, res) bool
    uv_indices: np.ndarray   # (M, 3) int voxel indices that carry uv
    uv: np.ndarray           # (M, 2) uv in [0, 1] of the crop

    @property
    def res(self) -> int:
        return int(self.occupancy.shape[0])


def decode_structure(ss_logits: torch.Tensor, uv_logits: torch.Tensor,
                     min_uv_voxels: int = config.MIN_UV_VOXELS,
                     threshold_step: float = config.UV_THRESHOLD_STEP) -> StructureResult:
    """ss_logits [1, R, R, R] (or [R, R, R]) and uv_logits [3, R, R, R] -> StructureResult."""
    ss = ss_logits.detach().float().reshape(ss_logits.shape[-3:]).cpu()
    uvl = uv_logits.detach().float().reshape(3, *uv_logits.shape[-3:]).cpu()
    occupancy = (ss > 0).numpy()
    active = ss > 0
    threshold = 0.0
    while int(active.sum()) < min_uv_voxels and threshold > float(ss.min()) - threshold_step:
        threshold -= threshold_step
        active = ss > threshold
    idx = torch.nonzero(active)
    uv = torch.sigmoid(uvl[1:3, idx[:, 0], idx[:, 1], idx[:, 2]].T)
    return StructureResult(occupancy=occupancy, uv_indices=idx.numpy().astype(np.int64), uv=uv.numpy())


def structure_from_cubes(occupancy: np.ndarray, uv_cube: np.ndarray) -> StructureResult:
    """A StructureResult straight from a boolean occupancy and a (R, R, R, 2) UV cube."""
    occ = np.asarray(occupancy, dtype=bool)
    idx = np.argwhere(occ)
    return StructureResult(occupancy=occ, uv_indices=idx, uv=np.asarray(uv_cube, dtype=np.float64)[tuple(idx.T)])


def pose_from_structure(structure: StructureResult, crop_offset: tuple[float, float], crop_size: float,
                        photo_size: tuple[int, int], seed: int = 0,
                        method: str = "robust") -> tuple[CameraPose, CameraSolution]:
    """Solve the camera from the structure's 3D-2D pairs, in the ORIGINAL photo's pixels.

    `method` is :func:`cupid.geometry.solve_camera`'s: "robust" (default) or "dlt" (the release's;
    its skew is kept in the solution, dropped from the photo camera, which a bundle exports).

    uv are normalised to the square crop, so the solve runs in crop pixels (side `crop_size`, photo
    pixels per crop pixel = 1); `de_crop` then shifts the principal point by the crop's offset.
    Returns (camera in photo pixels, the solver's result in crop pixels).
    """
    if not structure.occupancy.any():
        raise CupidError("stage 1 produced an empty shape: no voxel is occupied (try another seed)",
                         code="empty_structure")
    if structure.uv.shape[0] < 6:
        raise CupidError(f"stage 1 gave only {structure.uv.shape[0]} voxels with uv; at least 6 are needed "
                         f"to solve the camera", code="pose_failed")
    points = voxel_centers(structure.uv_indices, structure.res)
    try:
        solution = solve_camera(points, structure.uv, (crop_size, crop_size), method=method, seed=seed)
    except InputError as exc:
        raise CupidError(f"the camera could not be solved from stage 1's UV cube: {exc.message}",
                         code="pose_failed") from None
    pose = solution.pose.de_crop(1.0, crop_offset, image_size=photo_size)
    if method == "dlt":
        # Blender (and most renderers) cannot show a skewed camera: the exported camera drops the DLT's
        # skew, while stage 2 keeps projecting with the release's full camera (`solution`)
        pose.K[0, 1] = 0.0
    return pose, solution


def voxel_uvs(indices: np.ndarray, res: int, pose_in_crop: CameraPose) -> np.ndarray:
    """uv in [0, 1]² of the crop where each voxel centre projects, as the release computes them.

    The release (`_make_sparse_uvs_from_pose`) divides by the camera depth whatever its sign and then
    clamps to [0, 1], so a voxel behind the camera lands mirrored through the principal point and then
    on the border. A voxel exactly at depth 0 (no direction at all) gets 0.5 where 0/0 and the border
    where ±inf.
    """
    cam = voxel_centers(indices, res) @ pose_in_crop.R.T + pose_in_crop.t
    h = cam @ pose_in_crop.K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = h[:, :2] / h[:, 2:3] / np.array(pose_in_crop.image_size, dtype=np.float64)
    return np.clip(np.nan_to_num(uv, nan=0.5, posinf=1.0, neginf=0.0), 0.0, 1.0)
