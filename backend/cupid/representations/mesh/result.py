"""The mesh a structured latent decodes to: triangles plus per-vertex attributes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MeshExtractResult:
    """One object's FlexiCubes mesh in the object frame [-0.5, 0.5]³.

    `vertex_attrs` holds TRELLIS's 6 per-vertex channels (RGB in [0, 1], then 3 normal-map channels,
    all sigmoid-activated) when the decoder predicts colour, else None. `res` is the extraction grid.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_attrs: torch.Tensor | None = None
    res: int = 64

    def __post_init__(self) -> None:
        self.faces = self.faces.long()

    @property
    def success(self) -> bool:
        """False when the field has no surface (no vertices or no triangles)."""
        return self.vertices.shape[0] != 0 and self.faces.shape[0] != 0

    @property
    def face_normals(self) -> torch.Tensor:
        """[F, 3] unit normals, counter-clockwise winding (faces point towards positive SDF)."""
        v0, v1, v2 = (self.vertices[self.faces[:, i]] for i in range(3))
        return F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)

    @property
    def vertex_normals(self) -> torch.Tensor:
        """[V, 3] unit normals: area-weighted sum of the adjacent face normals."""
        v0, v1, v2 = (self.vertices[self.faces[:, i]] for i in range(3))
        fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
        vn = torch.zeros_like(self.vertices)
        for i in range(3):
            vn.index_add_(0, self.faces[:, i], fn)
        return F.normalize(vn, dim=-1)
