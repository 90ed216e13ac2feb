"""3D Gaussians decoded from a structured latent, with TRELLIS's parameterisation and activations.

The decoder predicts, for every active voxel, `num_gaussians` Gaussians as raw values packed per voxel
as [xyz offsets (G·3) | colour DC (G·3) | scaling (G·3) | rotation (G·4) | opacity (G)]. Raw values are
stored (`_xyz` in the [0, 1]³ unit cube, the others pre-activation) and the getters activate them:
positions in the object frame [-0.5, 0.5]³, softplus/exp scales with a bias and a minimum kernel size,
normalised quaternions (w, x, y, z), sigmoid opacities with a bias.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

# channel blocks of the decoder output, in order: name, values per Gaussian, per-Gaussian shape
LAYOUT: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("_xyz", 3, (3,)),
    ("_features_dc", 3, (1, 3)),
    ("_scaling", 3, (3,)),
    ("_rotation", 4, (4,)),
    ("_opacity", 1, (1,)),
)


def channels_per_voxel(num_gaussians: int) -> int:
    return num_gaussians * sum(n for _, n, _ in LAYOUT)


def _radical_inverse(base: int, n: int) -> float:
    val, inv, f = 0.0, 1.0 / base, 1.0 / base
    while n > 0:
        val += (n % base) * f
        n //= base
        f *= inv
    return val


def offset_perturbation(num_gaussians: int, voxel_size: float) -> torch.Tensor:
    """[G, 3] pre-tanh offsets spreading a voxel's Gaussians (Hammersley points; TRELLIS's buffer)."""
    pts = [[i / num_gaussians, _radical_inverse(2, i), _radical_inverse(3, i)] for i in range(num_gaussians)]
    p = torch.tensor(pts).float() * 2 - 1
    return torch.atanh(p / voxel_size)


def _inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


class Gaussians:
    """One object's Gaussians (sh degree 0), raw parameters + activated getters."""

    def __init__(self, aabb: tuple[float, ...] = (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0), *,
                 minimum_kernel_size: float = 0.0, scaling_bias: float = 0.01, opacity_bias: float = 0.1,
                 scaling_activation: str = "exp", device: torch.device | str = "cpu"):
        if scaling_activation not in ("exp", "softplus"):
            raise ValueError(f"scaling_activation must be 'exp' or 'softplus', got {scaling_activation!r}")
        self.aabb = torch.tensor(aabb, dtype=torch.float32, device=device)
        self.minimum_kernel_size = float(minimum_kernel_size)
        self.scaling_activation_type = scaling_activation
        sb = torch.tensor(scaling_bias, dtype=torch.float32)
        if scaling_activation == "exp":
            self.scale_bias = torch.log(sb)
        else:
            self.scale_bias = sb + torch.log(-torch.expm1(-sb))
        self.opacity_bias = _inverse_sigmoid(torch.tensor(opacity_bias, dtype=torch.float32))
        self.rots_bias = torch.tensor([1.0, 0.0, 0.0, 0.0])
        self._xyz: torch.Tensor | None = None
        self._features_dc: torch.Tensor | None = None
        self._scaling: torch.Tensor | None = None
        self._rotation: torch.Tensor | None = None
        self._opacity: torch.Tensor | None = None

    def _act_scale(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x) if self.scaling_activation_type == "exp" else F.softplus(x)

    def __len__(self) -> int:
        return 0 if self._xyz is None else self._xyz.shape[0]

    @property
    def xyz(self) -> torch.Tensor:
        """[M, 3] centres in the object frame."""
        return self._xyz * self.aabb[None, 3:].to(self._xyz) + self.aabb[None, :3].to(self._xyz)

    @property
    def scaling(self) -> torch.Tensor:
        """[M, 3] standard deviations, floored smoothly at the minimum kernel size."""
        s = self._act_scale(self._scaling + self.scale_bias.to(self._scaling))
        return torch.sqrt(torch.square(s) + self.minimum_kernel_size ** 2)

    @property
    def rotation(self) -> torch.Tensor:
        """[M, 4] unit quaternions (w, x, y, z)."""
        return F.normalize(self._rotation + self.rots_bias.to(self._rotation)[None], dim=-1)

    @property
    def opacity(self) -> torch.Tensor:
        """[M, 1] in (0, 1)."""
        return torch.sigmoid(self._opacity + self.opacity_bias.to(self._opacity))

    @property
    def features_dc(self) -> torch.Tensor:
        """[M, 1, 3] degree-0 spherical-harmonic colour coefficients (RGB = 0.5 + C0·f)."""
        return self._features_dc

    # TRELLIS-style names
    get_xyz = xyz
    get_scaling = scaling
    get_rotation = rotation
    get_opacity = opacity
    get_features = features_dc

    def ply_attributes(self) -> dict[str, np.ndarray]:
        """Standard 3DGS PLY fields (object frame): xyz, f_dc [M,3], opacity logit, log scale, quaternion."""
        return {
            "xyz": self.xyz.detach().float().cpu().numpy(),
            "f_dc": self._features_dc.detach().float().reshape(-1, 3).cpu().numpy(),
            "opacity": _inverse_sigmoid(self.opacity).detach().float().cpu().numpy(),
            "scale": torch.log(self.scaling).detach().float().cpu().numpy(),
            "rotation": (self._rotation + self.rots_bias.to(self._rotation)).detach().float().cpu().numpy(),
        }


def gaussians_from_decoder_output(coords: torch.Tensor, feats: torch.Tensor,
                                  representation_config: Mapping[str, Any], resolution: int,
                                  perturbation: torch.Tensor | None = None) -> list[Gaussians]:
    """Raw Gaussian-decoder output (per-voxel feats [N, G·14] at int coords [N, 4]) -> Gaussians per batch item.

    `perturbation` is the decoder's `offset_perturbation` buffer; when None it is recomputed (same values).
    """
    cfg = representation_config
    g = int(cfg["num_gaussians"])
    if feats.shape[-1] != channels_per_voxel(g):
        raise ValueError(f"expected {channels_per_voxel(g)} channels for {g} Gaussians per voxel, got {feats.shape[-1]}")
    lr = cfg.get("lr", {})
    voxel_size = float(cfg.get("voxel_size", 1.0))
    if cfg.get("perturb_offset", False) and perturbation is None:
        perturbation = offset_perturbation(g, voxel_size)
    batch = coords[:, 0].long()
    n_items = int(batch.max().item()) + 1 if batch.numel() else 0
    out = []
    for b in range(n_items):
        rows = (batch == b).nonzero().squeeze(1)
        f = feats[rows]
        c = coords[rows]
        gs = Gaussians(minimum_kernel_size=cfg.get("3d_filter_kernel_size", 0.0),
                       scaling_bias=cfg.get("scaling_bias", 0.01), opacity_bias=cfg.get("opacity_bias", 0.1),
                       scaling_activation=cfg.get("scaling_activation", "exp"), device=feats.device)
        centre = (c[:, 1:].float() + 0.5) / resolution
        start = 0
        for name, per, shape in LAYOUT:
            block = f[:, start:start + g * per].reshape(-1, g, *shape) * lr.get(name, 1.0)
            start += g * per
            if name == "_xyz":
                if cfg.get("perturb_offset", False):
                    block = block + perturbation.to(block)
                block = torch.tanh(block) / resolution * 0.5 * voxel_size
                value = (centre.unsqueeze(1) + block).flatten(0, 1)
            else:
                value = block.flatten(0, 1)
            setattr(gs, name, value)
        out.append(gs)
    return out


__all__ = ["Gaussians", "LAYOUT", "channels_per_voxel", "gaussians_from_decoder_output", "offset_perturbation"]
