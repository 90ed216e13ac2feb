"""What a reconstruction returns: the camera and, per object, its mesh, Gaussians, placement and pairs.

Why a type of its own: inference (`cupid.pipeline`) produces it and export (`cupid.export.write_bundle`)
writes it, and neither knows the other. It sits below both, next to the geometry it is made of.
Frames: meshes, Gaussians and pairs are in the object frame (Z-up, about [-0.5, 0.5]³); `placement`
maps the object frame into the world where `camera` lives (x_w = scale·R·x + t, x_cam = R_c·x_w + t_c).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import CameraPose, Similarity


def identity_placement() -> Similarity:
    """The object frame is the world (object mode: the camera looks at the object's own frame)."""
    return Similarity(scale=1.0, R=np.eye(3), t=np.zeros(3))


@dataclass
class Pairs:
    """An object's 3D-2D pairs from stage 1: voxel centres (object frame) and where they land in the
    photo (uv in [0, 1]² of the ORIGINAL photo), on a grid of `res` voxels per axis."""

    points: np.ndarray   # (N, 3) float64
    uv: np.ndarray       # (N, 2) float64
    res: int


@dataclass
class ReconstructedObject:
    """One object: the decoded mesh (vertex colours optional), its Gaussians, where it stands in the
    world, the camera solved from its own stage 1 (photo pixels), its 3D-2D pairs and its mask.

    `textured`: a mesh already post-processed by export (`cupid.export.TexturedMesh`, uv + texture),
    written as it is; None for everything inference produces."""

    name: str
    vertices: Any
    faces: Any
    vertex_colors: Any = None
    gaussians: Any = None
    placement: Similarity = field(default_factory=identity_placement)
    camera: CameraPose | None = None
    pairs: Pairs | None = None
    textured: Any = None
    mask: np.ndarray | None = None   # (H, W) float alpha of the object in the photo: what the fit score checks


@dataclass
class Preview:
    """Stage 1's answer, before the expensive stage 2: the camera (photo pixels) and the occupied voxels
    (object frame indices on a `res`³ grid). Lets the artist see and correct the camera early."""

    camera: CameraPose
    voxels: np.ndarray   # (M, 3) int voxel indices
    res: int

    def to_dict(self) -> dict:
        """The JSON of `GET /v1/jobs/{id}/preview` and of the CLI's preview.json."""
        cam = self.camera.to_dict()
        return {"camera": {"K": cam["K"], "R": cam["R"], "t": cam["t"]}, "width": self.camera.width,
                "height": self.camera.height, "res": int(self.res),
                "voxels": np.asarray(self.voxels, dtype=np.int64).tolist()}


@dataclass
class Reconstruction:
    """A whole result: the photo (H, W, 3 uint8), the camera in its pixels (OpenCV), the objects.

    The world is upright (+Z up, the ground at z = 0): `up` says how it was found (scene.json's "up":
    source, ground height, ...; None for a world that was never levelled) and `units` whether its lengths
    are "meters" (a metric point map measured them) or "relative"."""

    photo: np.ndarray
    camera: CameraPose
    objects: list[ReconstructedObject]
    mode: str = "object"
    seed: int = 0
    units: str = "relative"
    up: dict | None = None
