"""SLatGaussianDecoder: structured latent -> 3D Gaussians (`num_gaussians` per active voxel)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from ...representations.gaussian import (Gaussians, channels_per_voxel, gaussians_from_decoder_output,
                                         offset_perturbation)
from ...sparse import SparseLinear, SparseTensor
from .base import SparseTransformerBase


class SLatGaussianDecoder(SparseTransformerBase):
    """Sparse swin transformer + layer norm + linear head packing each voxel's Gaussian parameters."""

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: int | None = None, num_head_channels: int | None = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False,
                 representation_config: dict[str, Any] | None = None):
        super().__init__(in_channels=latent_channels, model_channels=model_channels, num_blocks=num_blocks,
                         num_heads=num_heads, num_head_channels=num_head_channels, mlp_ratio=mlp_ratio,
                         attn_mode=attn_mode, window_size=window_size, pe_mode=pe_mode, use_fp16=use_fp16,
                         use_checkpoint=use_checkpoint, qk_rms_norm=qk_rms_norm)
        if not representation_config or "num_gaussians" not in representation_config:
            raise ValueError("SLatGaussianDecoder needs a representation_config with num_gaussians")
        self.resolution = resolution
        self.rep_config = dict(representation_config)
        self.out_channels = channels_per_voxel(int(self.rep_config["num_gaussians"]))
        self.out_layer = SparseLinear(model_channels, self.out_channels)
        self.register_buffer("offset_perturbation", offset_perturbation(
            int(self.rep_config["num_gaussians"]), float(self.rep_config.get("voxel_size", 1.0))))
        self._finish_init(use_fp16)

    def forward_raw(self, x: SparseTensor) -> SparseTensor:
        """Output-layer features [N, G·14] (raw Gaussian parameters per voxel)."""
        h = self.forward_trunk(x).type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h)

    def to_representation(self, raw: SparseTensor) -> list[Gaussians]:
        return gaussians_from_decoder_output(raw.coords, raw.feats.float(), self.rep_config, self.resolution,
                                             self.offset_perturbation.float())

    def forward(self, x: SparseTensor) -> list[Gaussians]:
        """One `Gaussians` per batch item."""
        return self.to_representation(self.forward_raw(x))


class ElasticSLatGaussianDecoder(SLatGaussianDecoder):
    """Checkpoint name of the same network (TRELLIS's 'elastic' variant only changes training memory)."""
