"""What TRELLIS's two flow transformers share: their hyper-parameters, the timestep embedder and the
optional shared adaLN modulation (same attribute names as the checkpoints)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..modules.embedders import TimestepEmbedder
from .dtype import TorsoDtypeMixin


class FlowCoreMixin(TorsoDtypeMixin):
    """Mixed into an nn.Module flow; `_init_flow_core` runs right after `nn.Module.__init__`."""

    def _init_flow_core(self, *, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                        out_channels: int, num_blocks: int, num_heads: int | None, num_head_channels: int,
                        mlp_ratio: float, patch_size: int, pe_mode: str, share_mod: bool,
                        use_fp16: bool) -> None:
        if pe_mode != "ape":
            raise ValueError(f"pe_mode {pe_mode!r} is not supported (released checkpoints use 'ape')")
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.pe_mode = pe_mode
        self.share_mod = share_mod
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels, bias=True))

    def embed_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The (shared-modulated) timestep embedding, in the torso's dtype."""
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        return t_emb.type(self.dtype)
