"""Sinusoidal embeddings of timesteps and voxel positions (TRELLIS layouts)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] (possibly fractional) timesteps -> [N, dim] = [cos(t·f), sin(t·f)] with geometric f."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep -> vector: sinusoid (256) then Linear-SiLU-Linear (`mlp.0`, `mlp.2`)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AbsolutePositionEmbedder(nn.Module):
    """Integer positions [N, D] -> [N, channels]: per axis [sin(p·f), cos(p·f)], zero padded.

    The frequencies are recomputed on each call (no tensor state), so building on the meta device works.
    """

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2

    def freqs(self, device: torch.device) -> torch.Tensor:
        f = torch.arange(self.freq_dim, dtype=torch.float32, device=device) / self.freq_dim
        return 1.0 / (10000 ** f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        if d != self.in_channels:
            raise ValueError(f"expected positions with {self.in_channels} coordinates, got {d}")
        out = torch.outer(x.reshape(-1).float(), self.freqs(x.device))
        emb = torch.cat([torch.sin(out), torch.cos(out)], dim=-1).reshape(n, -1)
        if emb.shape[1] < self.channels:
            emb = torch.cat([emb, emb.new_zeros(n, self.channels - emb.shape[1])], dim=-1)
        return emb
