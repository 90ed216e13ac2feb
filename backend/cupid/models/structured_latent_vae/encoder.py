"""SLatEncoder: per-voxel features (e.g. 1024-d DINOv2 samples) -> 8-channel structured latent.

CUPID uses it to turn the image features sampled at each voxel's projection into a conditioning
latent (posterior mean, no sampling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...sparse import SparseLinear, SparseTensor
from .base import SparseTransformerBase


class SLatEncoder(SparseTransformerBase):
    """Sparse swin transformer producing a diagonal Gaussian posterior (mean, log-variance) per voxel."""

    def __init__(self, resolution: int, in_channels: int, model_channels: int, latent_channels: int,
                 num_blocks: int, num_heads: int | None = None, num_head_channels: int | None = 64,
                 mlp_ratio: float = 4, attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape",
                 use_fp16: bool = False, use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__(in_channels=in_channels, model_channels=model_channels, num_blocks=num_blocks,
                         num_heads=num_heads, num_head_channels=num_head_channels, mlp_ratio=mlp_ratio,
                         attn_mode=attn_mode, window_size=window_size, pe_mode=pe_mode, use_fp16=use_fp16,
                         use_checkpoint=use_checkpoint, qk_rms_norm=qk_rms_norm)
        self.resolution = resolution
        self.latent_channels = latent_channels
        self.out_layer = SparseLinear(model_channels, 2 * latent_channels)
        self._finish_init(use_fp16)

    def forward_raw(self, x: SparseTensor) -> SparseTensor:
        """Output-layer features [N, 2·latent] = (mean | log-variance)."""
        h = self.forward_trunk(x).type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h)

    def forward(self, x: SparseTensor, sample_posterior: bool = True, return_raw: bool = False,
                generator: torch.Generator | None = None):
        """Latent z (a posterior sample, or the mean when `sample_posterior` is False).

        With `return_raw`, returns (z, mean, logvar) with mean/logvar as plain tensors.
        """
        h = self.forward_raw(x)
        mean, logvar = h.feats.chunk(2, dim=-1)
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            noise = torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
            z = h.replace(mean + std * noise)
        else:
            z = h.replace(mean)
        return (z, mean, logvar) if return_raw else z


class ElasticSLatEncoder(SLatEncoder):
    """Checkpoint name of the same network (TRELLIS's 'elastic' variant only changes training memory)."""
