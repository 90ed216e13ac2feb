"""Dense building blocks shared by the TRELLIS/CUPID networks (attention, transformer blocks, embedders)."""
from .attention import MultiHeadAttention, MultiHeadRMSNorm, scaled_dot_product_attention
from .embedders import AbsolutePositionEmbedder, TimestepEmbedder, timestep_embedding
from .norm import ChannelLayerNorm32, GroupNorm32, LayerNorm32
from .spatial import patchify, pixel_shuffle_3d, unpatchify
from .transformer import (FeedForwardNet, ModulatedTransformerBlock, ModulatedTransformerCrossBlock,
                          TransformerBlock, TransformerCrossBlock)
from .utils import zero_module

__all__ = [
    "MultiHeadAttention", "MultiHeadRMSNorm", "scaled_dot_product_attention",
    "AbsolutePositionEmbedder", "TimestepEmbedder", "timestep_embedding",
    "ChannelLayerNorm32", "GroupNorm32", "LayerNorm32",
    "patchify", "pixel_shuffle_3d", "unpatchify",
    "FeedForwardNet", "ModulatedTransformerBlock", "ModulatedTransformerCrossBlock",
    "TransformerBlock", "TransformerCrossBlock",
    "zero_module",
]
