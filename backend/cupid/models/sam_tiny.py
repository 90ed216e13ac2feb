"""The tiny SAM of `cupid make-tiny-model`: segment-anything's layout at tiny widths, weights set by hand.

Random weights segment nothing, and fitting a SAM takes minutes of CPU. This network is instead
*built* (every other weight zero, norm gains one) so that it segments by colour, which is enough for
an ordinary photo of an object on a plainer background:

* image encoder: each 16-px patch's mean colour c (patch embedding), minus the mean colour m of the
  whole input (the global block attends uniformly; SAM's zero padding, ImageNet's mean colour, pulls
  m a little toward grey); the neck keeps w = (c − m, ε)/‖(c − m, ε)‖, so patches of the dominant
  background colour have a colour part w_c near 0 and distinctly coloured ones near a unit vector;
* prompts: the positional encoding uses four low frequencies (below half a cycle across the image),
  so a mask token that attends to the prompt tokens (a point, or both corners of a box) carries an
  encoding peaked at the point or at the box's centre, and attending over the image with it gathers
  the colour w̄ of the patch there;
* mask: logit(p) = γ·(⟨w̄_c, w_c(p)⟩ − τ), passed through the upscaling convolutions linearly (±
  channel pairs make the layer norms and GELUs exact), so a pixel belongs to the prompt's object
  when its colour deviates from the background like the prompted patch's does. A click on the
  background gives an empty mask. The IoU head always answers 0.95, so the automatic generator's
  filters are passed by every clean mask.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .sam import SAM_CONFIGS, Sam, build_sam

TINY_SAM_FILE = "sam_tiny.pth"

# colour: background damping ε, similarity threshold τ, logit gain γ; pass-through scales
EPS, TAU, GAIN = 0.3, 0.5, 40.0
_K = 100.0            # constant channel pair that makes the encoder's layer norms linear
_B, _S = 8.0, 2.0     # upscaled features = _S·H·w_c + _B, in GELU's linear range
_FREQ = 0.25          # |frequency| of the prompt encoding (cycles per unit of the [-1, 1] range)
_PROMPT_SHARPNESS = 30.0
_GATHER_SHARPNESS = 2000.0
IOU_ANSWER = 0.95

# decoder channel layout (prompt_embed_dim = 32): the dense encoding uses sin at 0-3, cos at 16-19;
# its other sin dims (4-15) are 0 and cos dims (20-31) are 1, so 4-15 carry the image and flags
_IMG = slice(4, 12)    # image embedding (w_c, −w_c, w_e, −w_e)
_Q_FLAG, _P_FLAG = 12, 13  # mask tokens ask; prompt tokens answer
_COLOUR = slice(0, 8)  # a mask token's gathered colour
_PLACE = 16            # a mask token's prompt encoding (s, c, −s, −c) at 16-31


def _helmert() -> torch.Tensor:
    """[4, 3]: orthonormal columns, each summing to 0 (R³ into the zero-sum subspace of R⁴)."""
    h = np.zeros((4, 3))
    for j in range(3):
        h[: j + 1, j] = 1.0
        h[j + 1, j] = -(j + 1)
        h[:, j] /= np.linalg.norm(h[:, j])
    return torch.tensor(h, dtype=torch.float32)


def _encoder(net: Sam) -> None:
    enc = net.image_encoder
    p = net.config.patch_size
    w = enc.patch_embed.proj.weight
    for k in range(3):  # channels 0-2: patch mean colour c, 3-5: −c, 6/7: ±K
        w[k, k] = 1.0 / (p * p)
        w[3 + k, k] = -1.0 / (p * p)
    enc.patch_embed.proj.bias[6], enc.patch_embed.proj.bias[7] = _K, -_K
    # block 0 is the identity (zero outputs); block 1 attends uniformly (zero queries and keys) and
    # subtracts the mean colour. Its norm divides by the std of (c, −c, K, −K, 0, ...) ≈ K·√(2/dim):
    # nearly constant, so the ± pairs keep it linear.
    glob = enc.blocks[1].attn
    dim = glob.qkv.weight.shape[1]
    for k in range(3):
        glob.qkv.weight[2 * dim + k, k] = _K * math.sqrt(2.0 / dim)  # value: the colour in its own units
        glob.proj.weight[k, k] = -1.0
        glob.proj.weight[3 + k, k] = 1.0
    neck_in, neck_mid = enc.neck[0].weight, enc.neck[2].weight
    for k in range(3):
        neck_in[_IMG.start + k, k] = 1.0
        neck_in[_IMG.start + 3 + k, 3 + k] = 1.0
    neck_in[_IMG.start + 6, 6] = EPS / _K
    neck_in[_IMG.start + 7, 7] = EPS / _K
    for o in range(_IMG.start, _IMG.stop):
        neck_mid[o, o, 1, 1] = 1.0


def _prompt_encoder(net: Sam) -> None:
    pe = net.prompt_encoder
    g = pe.pe_layer.positional_encoding_gaussian_matrix
    g.zero_()
    for i in range(4):
        a = math.pi * i / 4
        g[0, i], g[1, i] = _FREQ * math.cos(a), _FREQ * math.sin(a)
    for emb in pe.point_embeddings:
        emb.weight[0, _P_FLAG] = 1.0


def _decoder(net: Sam) -> None:
    dec = net.mask_decoder
    dec.mask_tokens.weight[:, _Q_FLAG] = 1.0
    layer = dec.transformer.layers[0]
    # self-attention (no residual in the first layer): mask tokens copy the prompt tokens' encoding
    sa = layer.self_attn
    sa.q_proj.weight[0, _Q_FLAG] = _PROMPT_SHARPNESS * math.sqrt(sa.internal_dim // sa.num_heads)
    sa.k_proj.weight[0, _P_FLAG] = 1.0
    for i in range(4):
        for j, (src, sign) in enumerate(((i, 1.0), (16 + i, 1.0), (i, -1.0), (16 + i, -1.0))):
            sa.v_proj.weight[4 * j + i, src] = sign
    for j in range(16):
        sa.out_proj.weight[_PLACE + j, j] = 1.0
    # tokens → image: the mask token's encoding against the dense one picks the patch at the prompt
    ti = layer.cross_attn_token_to_image
    head = ti.internal_dim // ti.num_heads
    scale = _GATHER_SHARPNESS / 16.0 * math.sqrt(head)  # the encoding arrives ×2 (norm1), 4 terms
    for i in range(4):
        ti.q_proj.weight[i, _PLACE + i] = scale
        ti.q_proj.weight[4 + i, _PLACE + 4 + i] = scale
        ti.k_proj.weight[i, i] = 1.0
        ti.k_proj.weight[4 + i, 16 + i] = 1.0
    for j in range(8):
        ti.v_proj.weight[j, _IMG.start + j] = 1.0
        ti.out_proj.weight[_COLOUR.start + j, j] = 1.0
    # upscaling: (w_c, −w_c, w_e, −w_e) → layer norm → GELU → H·w_c through GELU(x) − GELU(−x) = x
    up0, up3 = dec.output_upscaling[0], dec.output_upscaling[3]
    for k in range(8):
        up0.weight[_IMG.start + k, k] = 1.0
    h = _helmert()
    for k in range(3):
        up3.weight[k, :, :, :] = (_S / 2.0 * h[:, k])[:, None, None]
        up3.weight[3 + k, :, :, :] = (-_S / 2.0 * h[:, k])[:, None, None]
    up3.bias.fill_(_B)
    # hypernetworks: h = a·H·w̄_c + λ, so that h·(S·H·w_c + B) = γ(⟨w̄_c, w_c⟩ − τ); the gathered colour
    # arrives ×4/√2 (the image embedding's scale, then norm2 beside the encoding)
    a = GAIN / (_S * 4.0 / math.sqrt(2.0))
    for mlp in dec.output_hypernetworks_mlps:
        l0, l1, l2 = mlp.layers
        for k in range(3):
            l0.weight[k, _COLOUR.start + k] = 1.0
            l0.weight[3 + k, _COLOUR.start + k] = -1.0
            l1.weight[k, k], l1.weight[k, 3 + k] = 1.0, -1.0
            l1.weight[3 + k, k], l1.weight[3 + k, 3 + k] = -1.0, 1.0
            l2.weight[:, k] = a * h[:, k]
            l2.weight[:, 3 + k] = -a * h[:, k]
        l2.bias.fill_(-GAIN * TAU / (4.0 * _B))
    dec.iou_prediction_head.layers[-1].bias.fill_(IOU_ANSWER)


def tiny_sam_state() -> dict[str, torch.Tensor]:
    """The hand-built tiny SAM's state dict, in segment-anything's layout (see the module docstring)."""
    net = build_sam(SAM_CONFIGS["tiny"])
    with torch.no_grad():
        for name, module in net.named_modules():
            norm = "Norm" in type(module).__name__
            for pname, param in module.named_parameters(recurse=False):
                param.fill_(1.0 if norm and pname == "weight" else 0.0)
        _encoder(net)
        _prompt_encoder(net)
        _decoder(net)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def write_tiny_sam(folder: str | Path) -> Path:
    """Write `sam_tiny.pth` (a plain state dict, as the official `sam_vit_*.pth`) into `folder`."""
    out = Path(folder) / TINY_SAM_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_sam_state(), out)
    return out
