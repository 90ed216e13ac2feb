"""Camera and similarity geometry shared by the backend (numpy only).

A package of three subjects: `camera` (conventions, CameraPose, projection, UV cubes), `pnp`
(the camera from 3D-2D pairs) and `similarity` (Umeyama); every public name is importable from here.

The conventions (object frame, OpenCV camera, pixels and uv, similarity) are written once, in
`cupid.geometry.camera`, and are authoritative for the whole project.

Why this package exists: CUPID predicts, for every occupied voxel, where it lands in the photo
(a "UV cube"). The camera is recovered from those (point, uv) pairs by :func:`solve_camera`;
several objects of one scene are placed in a common camera frame by :func:`umeyama_robust`.
"""
from __future__ import annotations

from .camera import (GRID_RES, CameraPose, check_rotation, project, uncrop_uv, uv_cube, validate_camera,
                     voxel_centers)
from .pnp import PNP_METHODS, CameraSolution, decompose_projection, solve_camera
from .rotation import rodrigues, rotation_angle_deg
from .similarity import Similarity, refine_similarity_along_rays, umeyama, umeyama_robust

__all__ = [
    "GRID_RES",
    "CameraPose",
    "check_rotation",
    "validate_camera",
    "CameraSolution",
    "Similarity",
    "project",
    "uv_cube",
    "voxel_centers",
    "uncrop_uv",
    "solve_camera",
    "PNP_METHODS",
    "decompose_projection",
    "umeyama",
    "umeyama_robust",
    "refine_similarity_along_rays",
    "rotation_angle_deg",
    "rodrigues",
]

