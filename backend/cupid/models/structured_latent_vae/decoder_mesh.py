"""SLatMeshDecoder: structured latent (64³) -> FlexiCubes features at 256³ -> one mesh per object.

After the transformer, two subdivide blocks each split every voxel into 8 children (conv res blocks
at the finer grid, channels /4 then /2), so the output layer predicts FlexiCubes corner SDF,
deformation, weights and colour on a grid 4× finer than the latent.

The blocks' skip connections are 1×1 sparse convolutions (the channel count changes), which TRELLIS
ran on spconv: `conv1x1_convention` ("spconv" by default, as every TRELLIS/CUPID checkpoint was trained;
"textbook" selectable in the checkpoint's JSON args) says how their weights are meant, see
`cupid.sparse.conv`. The re-lay happens once at load; nothing changes at run time.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ...modules.utils import zero_module
from ...representations.mesh import MeshExtractResult, feature_channels, flexicubes_mesh
from ...sparse import SparseConv3d, SparseGroupNorm32, SparseLinear, SparseSiLU, SparseSubdivide, SparseTensor
from ...sparse.conv import check_conv1x1_convention
from .base import SparseTransformerBase


class SparseSubdivideBlock3d(nn.Module):
    """Norm+SiLU, subdivide ×2, conv-norm-SiLU-conv, plus a (1×1 conv) skip of the subdivided input."""

    def __init__(self, channels: int, resolution: int, out_channels: int | None = None, num_groups: int = 32,
                 conv1x1_convention: str = "spconv"):
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        self.out_resolution = resolution * 2
        self.out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.sub = SparseSubdivide()
        self.out_layers = nn.Sequential(
            SparseConv3d(channels, self.out_channels, 3),
            SparseGroupNorm32(num_groups, self.out_channels),
            SparseSiLU(),
            zero_module(SparseConv3d(self.out_channels, self.out_channels, 3)),
        )
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else SparseConv3d(channels, self.out_channels, 1,
                                                  conv1x1_convention=conv1x1_convention))

    def forward(self, x: SparseTensor) -> SparseTensor:
        """out_layers(sub(act(x))) + skip(sub(x)), computed without the two 8×-larger subdivided inputs
        (the block's memory peak at 256³): the first conv gathers from the parents' rows
        (`forward_on_parents`), and the skip, a 1×1 conv or identity, acts per row and so commutes with
        subdivision: it runs on the parents and is added to each parent's 8 children in place (the
        same weight, re-laid at load under the spconv convention, as TRELLIS's skip on the children)."""
        children = self.sub(x.replace(x.feats[:, :0]))  # the finer grid's coordinates, no features
        h = self.out_layers[0].forward_on_parents(self.act_layers(x), children, 8)
        for layer in self.out_layers[1:]:
            h = layer(h)
        skip = self.skip_connection(x).feats
        out = h.feats.view(skip.shape[0], 8, -1)
        out += skip.unsqueeze(1).to(out.dtype)
        return h


class SLatMeshDecoder(SparseTransformerBase):
    """Sparse swin transformer + 2 subdivide blocks + linear FlexiCubes head."""

    torso_names = ("blocks", "upsample")

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: int | None = None, num_head_channels: int | None = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False,
                 representation_config: dict[str, Any] | None = None, conv1x1_convention: str = "spconv"):
        check_conv1x1_convention(conv1x1_convention)  # before anything is built
        super().__init__(in_channels=latent_channels, model_channels=model_channels, num_blocks=num_blocks,
                         num_heads=num_heads, num_head_channels=num_head_channels, mlp_ratio=mlp_ratio,
                         attn_mode=attn_mode, window_size=window_size, pe_mode=pe_mode, use_fp16=use_fp16,
                         use_checkpoint=use_checkpoint, qk_rms_norm=qk_rms_norm)
        self.resolution = resolution
        self.conv1x1_convention = conv1x1_convention
        self.rep_config = dict(representation_config or {})
        self.use_color = bool(self.rep_config.get("use_color", False))
        self.mesh_resolution = resolution * 4
        self.out_channels = feature_channels(self.use_color)
        self.upsample = nn.ModuleList([
            SparseSubdivideBlock3d(model_channels, resolution, out_channels=model_channels // 4,
                                   conv1x1_convention=conv1x1_convention),
            SparseSubdivideBlock3d(model_channels // 4, resolution * 2, out_channels=model_channels // 8,
                                   conv1x1_convention=conv1x1_convention),
        ])
        self.out_layer = SparseLinear(model_channels // 8, self.out_channels)
        self._finish_init(use_fp16)

    def forward_raw(self, x: SparseTensor) -> SparseTensor:
        """Output-layer features at 4× the latent resolution (rows: every latent voxel's 64 children)."""
        h = self.forward_trunk(x)
        for block in self.upsample:
            h = block(h)
        return self.out_layer(h.type(x.dtype))

    def to_representation(self, raw: SparseTensor) -> list[MeshExtractResult]:
        """FlexiCubes (inference path) on each batch item's output features."""
        meshes = []
        for rows in raw.layout:
            meshes.append(flexicubes_mesh(raw.coords[rows, 1:], raw.feats[rows].float(), self.mesh_resolution,
                                          use_color=self.use_color))
        return meshes

    def forward(self, x: SparseTensor) -> list[MeshExtractResult]:
        """One `MeshExtractResult` per batch item (vertices in [-0.5, 0.5]³, 6 colour/normal attrs)."""
        return self.to_representation(self.forward_raw(x))


class ElasticSLatMeshDecoder(SLatMeshDecoder):
    """Checkpoint name of the same network (TRELLIS's 'elastic' variant only changes training memory)."""
