"""The structured-latent VAE: encoder, Gaussian decoder and FlexiCubes mesh decoder.

Every network has `forward_raw(x)` (the output layer's SparseTensor, for parity checks and custom
post-processing) and `forward(x)`; the decoders' `forward` returns one representation per batch item.
"""
from .base import SparseTransformerBase
from .decoder_gs import ElasticSLatGaussianDecoder, SLatGaussianDecoder
from .decoder_mesh import ElasticSLatMeshDecoder, SLatMeshDecoder, SparseSubdivideBlock3d
from .encoder import ElasticSLatEncoder, SLatEncoder

__all__ = ["SLatEncoder", "SLatGaussianDecoder", "SLatMeshDecoder", "ElasticSLatEncoder",
           "ElasticSLatGaussianDecoder", "ElasticSLatMeshDecoder", "SparseSubdivideBlock3d",
           "SparseTransformerBase"]
