"""Parameter dtype helpers: TRELLIS stores the 'torso' primitives (linears, convs) in float16.

They live with the models because they must know every primitive, the sparse convolution included."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..sparse.conv import SubMConv3d


def _primitive_types() -> tuple[type, ...]:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.Linear, SubMConv3d)


def convert_module_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters of every linear/conv inside `module` (norms and embeddings untouched)."""
    types = _primitive_types()
    for m in module.modules():
        if isinstance(m, types):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(dtype)


def convert_module_to_f16(module: nn.Module) -> None:
    convert_module_to(module, torch.float16)


def convert_module_to_f32(module: nn.Module) -> None:
    convert_module_to(module, torch.float32)


class TorsoDtypeMixin:
    """Compute-dtype control of a network whose 'torso' (transformer/conv blocks) may run in low precision.

    TRELLIS keeps embedders, input/output layers and norms in float32 and casts the torso's linears and
    convs to float16 when `use_fp16` is set; activations are cast to `self.dtype` on entering the torso.
    Subclasses list their torso attributes in `torso_names`.
    """

    torso_names: tuple[str, ...] = ("blocks",)
    dtype: torch.dtype = torch.float32

    def torso_modules(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.torso_names if getattr(self, n, None) is not None]

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast the torso primitives to `dtype` and run the torso in it (other parameters unchanged)."""
        for m in self.torso_modules():
            convert_module_to(m, dtype)
        self.dtype = dtype
        self.use_fp16 = dtype == torch.float16

    def convert_to_fp16(self) -> None:
        self.set_compute_dtype(torch.float16)

    def convert_to_fp32(self) -> None:
        self.set_compute_dtype(torch.float32)
