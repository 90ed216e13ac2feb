"""Dense spatial rearrangements: 3D pixel shuffle and (un)patchify in TRELLIS's channel order."""
from __future__ import annotations

import torch


def pixel_shuffle_3d(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """[B, C·s³, H, W, D] -> [B, C, H·s, W·s, D·s]; channel index = c·s³ + i·s² + j·s + k."""
    b, c, h, w, d = x.shape
    s = scale_factor
    x = x.reshape(b, c // s ** 3, s, s, s, h, w, d)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // s ** 3, h * s, w * s, d * s)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, *S] -> [B, C·p^n, *(S/p)], the patch offsets being the fastest-varying channel digits."""
    n = x.dim() - 2
    p = patch_size
    for d in range(2, n + 2):
        if x.shape[d] % p:
            raise ValueError(f"spatial size {x.shape[d]} not divisible by patch size {p}")
    split = []
    for d in range(2, n + 2):
        split += [x.shape[d] // p, p]
    x = x.reshape(*x.shape[:2], *split)
    x = x.permute(0, 1, *[2 * i + 3 for i in range(n)], *[2 * i + 2 for i in range(n)])
    return x.reshape(x.shape[0], x.shape[1] * p ** n, *x.shape[-n:])


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    n = x.dim() - 2
    p = patch_size
    if x.shape[1] % p ** n:
        raise ValueError(f"channels {x.shape[1]} not divisible by {p}^{n}")
    x = x.reshape(x.shape[0], x.shape[1] // p ** n, *[p] * n, *x.shape[-n:])
    perm = [0, 1]
    for i in range(n):
        perm += [2 + n + i, 2 + i]
    x = x.permute(*perm)
    return x.reshape(x.shape[0], x.shape[1], *[x.shape[2 + 2 * i] * p for i in range(n)])
