"""Parameter dtype helpers: TRELLIS stores the 'torso' primitives (linears, convs) in float16.

They live with the models because they must know every primitive, the sparse convolution included.
A torso computed in float32 may keep the checkpoint's float16 weights as they are stored (*stored
weights*): each primitive then reads its weight cast to float32 at every use. The cast is exact, so the
results are those of float32 weights, at half the resident memory, for about 1% more time."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..sparse.conv import SubMConv3d


def _primitive_types() -> tuple[type, ...]:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.Linear, SubMConv3d)


LOW_PRECISION = (torch.float16, torch.bfloat16)
_STORED_CLASSES: dict[type, type] = {}


def _cast_param(name: str) -> property:
    def get(self: nn.Module) -> torch.Tensor | None:
        p = self._parameters[name]
        return None if p is None else p.to(self.compute_dtype)
    return property(get, doc=f"`{name}` cast from its stored dtype to `compute_dtype` (a fresh tensor per read)")


def _stored_class(cls: type) -> type:
    """`cls` whose `weight`/`bias` read as `compute_dtype` casts of the stored parameters (same name, so
    reprs, isinstance checks and state-dict keys are unchanged; forward code needs no change)."""
    if cls not in _STORED_CLASSES:
        _STORED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "weight": _cast_param("weight"), "bias": _cast_param("bias"), "_stored_base": cls,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _STORED_CLASSES[cls]


def is_stored(module: nn.Module) -> bool:
    """Whether `module` keeps low-precision weights and computes with them cast (see `keep_stored`)."""
    return "_stored_base" in type(module).__dict__


def _unstore(module: nn.Module) -> None:
    if is_stored(module):
        module.__class__ = type(module).__dict__["_stored_base"]


def keep_stored(module: nn.Module, compute_dtype: torch.dtype) -> None:
    """Let one primitive keep its low-precision stored weights and compute in `compute_dtype`."""
    if not is_stored(module):
        module.__class__ = _stored_class(type(module))
    module.compute_dtype = compute_dtype


def convert_module_to(module: nn.Module, dtype: torch.dtype, keep_low: bool = False) -> None:
    """Cast the parameters of every linear/conv inside `module` (norms and embeddings untouched).

    `keep_low`: primitives whose weights are stored in a lower precision than `dtype` keep them and cast
    them at each use instead (exact for float16 -> float32, half the memory)."""
    types = _primitive_types()
    wide = torch.finfo(dtype).bits if dtype.is_floating_point else 0
    for m in module.modules():
        if not isinstance(m, types):
            continue
        _unstore(m)
        params = [p for p in m.parameters(recurse=False)]
        if keep_low and params and all(p.dtype in LOW_PRECISION and torch.finfo(p.dtype).bits < wide
                                       for p in params):
            keep_stored(m, dtype)
            continue
        for p in params:
            p.data = p.data.to(dtype)


def place_weights(model: nn.Module, compute_dtype: torch.dtype, keep_low: bool = True) -> None:
    """Put freshly loaded checkpoint tensors in their run dtypes: a network with a torso computes it in
    `compute_dtype` (its low-precision stored weights kept when `keep_low`, see `keep_stored`) and
    everything else in float32, as TRELLIS's mixed precision does; other networks wholly in
    `compute_dtype`. Nothing is upcast first, so loading never holds a float32 copy of a float16 torso."""
    if not isinstance(model, TorsoDtypeMixin):
        model.to(compute_dtype)
        return
    types = _primitive_types()
    torso = {id(p) for t in model.torso_modules() for m in t.modules() if isinstance(m, types)
             for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) not in torso and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    for b in model.buffers():
        if b.is_floating_point() and b.dtype != torch.float32:
            b.data = b.data.float()
    model.set_compute_dtype(compute_dtype, keep_low=keep_low)


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

    def set_compute_dtype(self, dtype: torch.dtype, keep_low: bool = False) -> None:
        """Cast the torso primitives to `dtype` and run the torso in it (other parameters unchanged);
        `keep_low` keeps low-precision stored weights and casts them at each use (see `keep_stored`)."""
        for m in self.torso_modules():
            convert_module_to(m, dtype, keep_low)
        self.dtype = dtype
        self.use_fp16 = dtype == torch.float16

    def convert_to_fp16(self) -> None:
        self.set_compute_dtype(torch.float16)

    def convert_to_fp32(self) -> None:
        self.set_compute_dtype(torch.float32)
