"""Which PyTorch build this computer needs, and from where: the one choice of the set-up that
differs per machine.

- an NVIDIA driver (``nvidia-smi`` answers): the CUDA build from PyTorch's own index, the newest one
  the driver's CUDA version runs (``nvidia-smi`` prints "CUDA Version: 12.9": the driver runs CUDA
  12.9 and older);
- Apple silicon: the standard wheel from PyPI (it has MPS);
- anything else: the CPU build from PyTorch's CPU index, so a CPU box does not download gigabytes of
  CUDA libraries.

The preference *PyTorch build* (Auto / CUDA / CPU) overrides the detection; ``CUPID_TORCH`` (a pip
requirement, as ``install/setup.sh`` takes it) and ``CUPID_TORCH_INDEX`` (an index URL; unset: pip's
own configuration) override the spec and index altogether, e.g. for a local mirror.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional

from .system import CREATE_NO_WINDOW, Platform

TORCH_VERSION = "2.13.0"                  # the PyTorch the backend is tested with (install/setup.sh's too)
TORCH_SPEC = f"torch=={TORCH_VERSION}"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
# CUDA builds PyTorch publishes for TORCH_VERSION, newest first: (major, minor) of the CUDA runtime.
CUDA_BUILDS: tuple[tuple[int, int], ...] = ((13, 0), (12, 8), (12, 6))
CHOICES = ("AUTO", "CUDA", "CPU")
TORCH_ENV, INDEX_ENV = "CUPID_TORCH", "CUPID_TORCH_INDEX"


class TorchChoiceError(Exception):
    """No PyTorch build fits the choice on this computer; the message says why and what to do."""


@dataclass(frozen=True)
class Nvidia:
    """What ``nvidia-smi`` says: the driver's CUDA version and the GPU's name."""

    cuda: tuple[int, int]
    gpu: str = ""


@dataclass(frozen=True)
class TorchBuild:
    """What the set-up installs: pip requirement, index (None: pip's own configuration) and the
    words the panel prints (`label`, and `reason` for the choice)."""

    kind: str                  # "cuda", "cpu", "mps" or "custom"
    spec: str
    index_url: Optional[str]
    label: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TorchBuild":
        return cls(**{k: data.get(k) for k in ("kind", "spec", "index_url", "label", "reason")})

    def pip_args(self) -> list[str]:
        """``pip install`` arguments for this build."""
        return [self.spec] + (["--index-url", self.index_url] if self.index_url else [])


def parse_nvidia_smi(text: str) -> Optional[tuple[int, int]]:
    """The driver's CUDA version from ``nvidia-smi``'s banner ("CUDA Version: 12.9"), else None."""
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect_nvidia(plat: Platform, which: Callable[[str], Optional[str]],
                  run: Callable[..., Any] = subprocess.run) -> Optional[Nvidia]:
    """The NVIDIA driver of this computer, or None (no nvidia-smi, or it fails: no usable driver)."""
    if plat.mac:
        return None
    exe = which("nvidia-smi")
    if not exe:
        return None
    kwargs = {"creationflags": CREATE_NO_WINDOW} if plat.windows else {}
    try:
        banner = run([exe], capture_output=True, text=True, timeout=30, **kwargs)
        names = run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                    timeout=30, **kwargs)
    except (OSError, subprocess.SubprocessError):
        return None
    cuda = parse_nvidia_smi(banner.stdout) if banner.returncode == 0 else None
    if cuda is None:
        return None
    gpu = names.stdout.strip().splitlines()[0].strip() if names.returncode == 0 and names.stdout.strip() else ""
    return Nvidia(cuda, gpu)


def cuda_build_for(driver: tuple[int, int]) -> Optional[tuple[int, int]]:
    """The newest CUDA build whose runtime the driver runs, else None (driver too old)."""
    for build in CUDA_BUILDS:
        if build <= driver:
            return build
    return None


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def choose_torch(choice: str, plat: Platform, nvidia: Optional[Nvidia],
                 environ: Mapping[str, str] | None = None) -> TorchBuild:
    """The PyTorch build to install for the preference `choice` (AUTO, CUDA or CPU) on `plat`.
    Raises TorchChoiceError where none fits."""
    environ = environ or {}
    if environ.get(TORCH_ENV, "").strip():
        spec, index = environ[TORCH_ENV].strip(), environ.get(INDEX_ENV, "").strip() or None
        where = index or "pip's configured index"
        return TorchBuild("custom", spec, index, f"{spec} (from {TORCH_ENV})", f"{TORCH_ENV} is set: {spec} from {where}")
    choice = (choice or "AUTO").upper()
    if choice not in CHOICES:
        raise TorchChoiceError(f"unknown PyTorch build {choice!r}: choose Auto, CUDA or CPU")
    if plat.mac:
        if not plat.apple_silicon:
            raise TorchChoiceError("PyTorch publishes no builds for Intel Macs since version 2.2, and the CUPID "
                                   "backend needs 2.3 or newer: use a remote backend (a GPU box) instead")
        if choice == "CUDA":
            raise TorchChoiceError("CUDA needs an NVIDIA GPU, which Macs do not have: choose Auto or CPU")
        return TorchBuild("mps", TORCH_SPEC, None, f"PyTorch {TORCH_VERSION} for Apple silicon (Metal, MPS)",
                          "Apple silicon: the standard wheel, which computes on the GPU through Metal")
    cpu = TorchBuild("cpu", TORCH_SPEC, f"{PYTORCH_INDEX}/cpu", f"PyTorch {TORCH_VERSION}, CPU build", "")
    if choice == "CPU":
        return _with_reason(cpu, "CPU chosen in the preferences")
    if nvidia is None:
        if choice == "CUDA":
            raise TorchChoiceError("CUDA chosen, but no NVIDIA driver answers (nvidia-smi not found or failing): "
                                   "install the NVIDIA driver, or choose Auto or CPU")
        return _with_reason(cpu, "no NVIDIA GPU found (nvidia-smi): the CPU build, without CUDA libraries")
    build = cuda_build_for(nvidia.cuda)
    gpu = nvidia.gpu or "an NVIDIA GPU"
    if build is None:
        oldest = _v(CUDA_BUILDS[-1])
        why = (f"{gpu}'s driver runs CUDA {_v(nvidia.cuda)} and PyTorch {TORCH_VERSION}'s oldest CUDA build "
               f"needs {oldest}: update the NVIDIA driver")
        if choice == "CUDA":
            raise TorchChoiceError(why + ", or choose CPU")
        return _with_reason(cpu, why + " for GPU speed; until then the CPU build")
    tag = f"cu{build[0]}{build[1]}"
    return TorchBuild("cuda", TORCH_SPEC, f"{PYTORCH_INDEX}/{tag}", f"PyTorch {TORCH_VERSION}, CUDA {_v(build)} build",
                      f"{gpu}, driver runs CUDA {_v(nvidia.cuda)}: the newest build it runs ({tag})")


def _with_reason(build: TorchBuild, reason: str) -> TorchBuild:
    return TorchBuild(build.kind, build.spec, build.index_url, build.label, reason)
