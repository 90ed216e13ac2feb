"""Shared trunk of the SLat VAE: input linear + absolute position embedding + sparse transformer blocks.

The released VAE checkpoints use 'swin' attention: windows of `window_size`³ voxels, every odd block
shifted by half a window so information crosses window borders. State-dict names follow TRELLIS
(`input_layer`, `blocks.{i}.attn`, `blocks.{i}.mlp`, `out_layer`).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from ...modules.embedders import AbsolutePositionEmbedder
from ..dtype import TorsoDtypeMixin
from ...sparse import SparseLinear, SparseTensor, SparseTransformerBlock

ATTN_MODES = ("full", "swin")


def block_attention(attn_mode: str, window_size: int | None, num_blocks: int
                    ) -> Iterator[tuple[str, int | None, int | None]]:
    """(attention kind, window size, window shift) of each block."""
    if attn_mode not in ATTN_MODES:
        raise ValueError(f"attn_mode {attn_mode!r} is not supported; released SLat VAE checkpoints use "
                         f"one of {ATTN_MODES}")
    for i in range(num_blocks):
        if attn_mode == "full":
            yield "full", None, None
        else:
            if not window_size:
                raise ValueError("swin attention needs a window_size")
            yield "windowed", window_size, window_size // 2 * (i % 2)


class SparseTransformerBase(TorsoDtypeMixin, nn.Module):
    """Sparse transformer without an output layer (encoder and decoders add theirs)."""

    torso_names = ("blocks",)

    def __init__(self, in_channels: int, model_channels: int, num_blocks: int, num_heads: int | None = None,
                 num_head_channels: int | None = 64, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size: int | None = None, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"pe_mode {pe_mode!r} is not supported (released checkpoints use 'ape')")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_blocks = num_blocks
        self.window_size = window_size
        self.num_heads = num_heads or model_channels // num_head_channels
        self.mlp_ratio = mlp_ratio
        self.attn_mode = attn_mode
        self.pe_mode = pe_mode
        self.qk_rms_norm = qk_rms_norm
        self.use_fp16 = use_fp16
        self.dtype = torch.float32

        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = SparseLinear(in_channels, model_channels)
        self.blocks = nn.ModuleList([
            SparseTransformerBlock(model_channels, num_heads=self.num_heads, mlp_ratio=mlp_ratio,
                                   attn_mode=kind, window_size=ws, shift_window=shift, qk_rms_norm=qk_rms_norm)
            for kind, ws, shift in block_attention(attn_mode, window_size, num_blocks)
        ])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def initialize_weights(self) -> None:
        """Xavier-uniform linears, zero biases (TRELLIS's init); skipped on the meta device."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and not m.weight.is_meta:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _zero_out_layer(self, layer: nn.Linear) -> None:
        if not layer.weight.is_meta:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _finish_init(self, use_fp16: bool) -> None:
        self.initialize_weights()
        self._zero_out_layer(self.out_layer)
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    def forward_trunk(self, x: SparseTensor) -> SparseTensor:
        """Features after the transformer blocks, in the torso dtype."""
        if x.feats.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.feats.shape[-1]}")
        h = self.input_layer(x)
        h = h + self.pos_embedder(x.coords[:, 1:]).to(h.dtype)
        h = h.type(self.dtype)
        for block in self.blocks:
            h = block(h)
        return h
