"""Pure-PyTorch sparse voxel tensors and layers (the parts of spconv/flash-attn that TRELLIS uses).

`SparseTensor(feats [N, C], coords int32 [N, 4] = (batch, x, y, z))`, submanifold 3D convolution with
spconv-layout weights, mean-pool downsample / paired upsample / subdivide, full and shifted-window
sparse attention, and the sparse transformer blocks.
"""
from .attention import (SparseMultiHeadAttention, SparseMultiHeadRMSNorm, WindowPartition,
                        sparse_cross_attention, sparse_self_attention, sparse_windowed_self_attention,
                        varlen_attention, window_partition, windowed_attention)
from .conv import SparseConv3d, SubMConv3d, submanifold_conv3d
from .neighbors import NeighborMap, build_neighbor_map, kernel_offsets, neighbor_map
from .nn import (SparseActivation, SparseGELU, SparseGroupNorm, SparseGroupNorm32, SparseLayerNorm,
                 SparseLayerNorm32, SparseLinear, SparseReLU, SparseSiLU)
from .spatial import (SparseDownsample, SparseSubdivide, SparseUpsample, sparse_downsample, sparse_subdivide,
                      sparse_upsample)
from .tensor import SparseTensor, sparse_batch_broadcast, sparse_batch_op, sparse_cat, sparse_unbind
from .transformer import (ModulatedSparseTransformerBlock, ModulatedSparseTransformerCrossBlock,
                          SparseFeedForwardNet, SparseTransformerBlock, SparseTransformerCrossBlock)

__all__ = [
    "SparseTensor", "sparse_batch_broadcast", "sparse_batch_op", "sparse_cat", "sparse_unbind",
    "SparseConv3d", "SubMConv3d", "submanifold_conv3d",
    "NeighborMap", "build_neighbor_map", "kernel_offsets", "neighbor_map",
    "SparseActivation", "SparseGELU", "SparseGroupNorm", "SparseGroupNorm32", "SparseLayerNorm",
    "SparseLayerNorm32", "SparseLinear", "SparseReLU", "SparseSiLU",
    "SparseDownsample", "SparseSubdivide", "SparseUpsample", "sparse_downsample", "sparse_subdivide",
    "sparse_upsample",
    "SparseMultiHeadAttention", "SparseMultiHeadRMSNorm", "WindowPartition", "sparse_cross_attention",
    "sparse_self_attention", "sparse_windowed_self_attention", "varlen_attention", "window_partition",
    "windowed_attention",
    "ModulatedSparseTransformerBlock", "ModulatedSparseTransformerCrossBlock", "SparseFeedForwardNet",
    "SparseTransformerBlock", "SparseTransformerCrossBlock",
]
