"""Parameter dtype helpers: TRELLIS stores the 'torso' primitives (linears, convs) in float16.

They live with the models because they must know every primitive, the sparse convolution included.
A torso computed in float32 may keep the checkpoint's float16 weights as they are stored (*stored
weights*): each primitive then reads its weight cast to float32 at every use. The cast is exact, so the
results are those of float32 weights, at half the resident memory, for about 1% more time.
The policy of which dtype a device runs (`resolve_dtype`) lives here too, beside what it sets.
"""
from __future__ import annotations

import functools
import platform
import subprocess

import torch
import torch.nn as nn

from ..errors import InputError
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


# ---------------------------------------------------------------- which dtype a device runs

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_NAMED: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_X86_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}   # Linux /proc/cpuinfo "flags" (Intel Cooper Lake+, AMD Zen 4+)


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def bf16_in_cpuinfo(cpuinfo: str, machine: str) -> bool:
    """Whether a Linux /proc/cpuinfo text names native bf16 matrix instructions for this architecture."""
    tokens: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            tokens.update(value.split())
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return bool(tokens & _X86_BF16_FLAGS)
    if machine in ("aarch64", "arm64"):
        return "bf16" in tokens
    return False


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16/AMX, Arm FEAT_BF16).

    Without them PyTorch emulates bf16 and a matmul runs several times slower than in float32
    (an AVX2-only EPYC: ~19 vs ~150 GFLOP/s); with them bf16 is ~4x the float32 rate."""
    system, machine = platform.system(), platform.machine().lower()
    if system == "Linux":
        return bf16_in_cpuinfo(_read_cpuinfo(), machine)
    if system == "Darwin" and machine == "arm64":
        return _sysctl("hw.optional.arm.FEAT_BF16") == "1"
    return False


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def _explicit(requested: str | torch.dtype) -> torch.dtype:
    if isinstance(requested, torch.dtype):
        if requested not in _NAMED.values():
            raise InputError(f"unsupported dtype {dtype_name(requested)}: use one of {', '.join(DTYPE_CHOICES)}")
        return requested
    name = str(requested).strip().lower()
    if name not in _NAMED:
        raise InputError(f"unknown dtype {requested!r}: use one of {', '.join(DTYPE_CHOICES)}")
    return _NAMED[name]


def _is_auto(requested: str | torch.dtype | None) -> bool:
    return requested is None or (isinstance(requested, str) and requested.strip().lower() in ("", "auto"))


def resolve_dtype(requested: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The networks' torso dtype on `device`. 'auto' (or None): float16 on CUDA, as the release runs;
    float32 on Apple MPS; on the CPU bfloat16 where it has bf16 instructions, else float32 (emulated
    bf16 is several times slower there). A name or torch dtype asked for is used on every device."""
    if not _is_auto(requested):
        return _explicit(requested)  # type: ignore[arg-type]
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def describe_dtype_choice(requested: str | torch.dtype | None, device: torch.device | str) -> str:
    """The resolved dtype and why, for the log and the CLI: 'float32 (auto: this CPU has no bf16 instructions)'."""
    dtype = resolve_dtype(requested, device)
    kind = torch.device(device).type
    name = dtype_name(dtype)
    if not _is_auto(requested):
        if kind == "cpu" and dtype == torch.float16:
            return f"{name} (asked for; slow on a CPU)"
        if kind == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16():
            return f"{name} (asked for; this CPU has no bf16 instructions: slower than float32)"
        return f"{name} (asked for)"
    if kind == "cuda":
        return f"{name} (auto: CUDA, as the release)"
    if kind == "mps":
        return f"{name} (auto: Apple MPS)"
    if kind == "cpu":
        return f"{name} (auto: this CPU {'has' if cpu_has_bf16() else 'has no'} bf16 instructions)"
    return f"{name} (auto)"
