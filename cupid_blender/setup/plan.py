"""What a set-up will do and whether this computer can take it, decided before anything starts: the
request handed to the set-up process, the disk space the chosen build needs (stated in figures),
and Windows' path-length limit.

Sizes: the CPU build was measured on Linux here (PyTorch 2.13.0 CPU 0.7 GB installed, the backend's
other libraries 0.8 GB, the whole environment 1.5 GB without pip's bytecode); the CUDA and Apple builds
are estimates from their published wheel sizes (no GPU or Mac here). The weights are about 5 GB
(README, Models).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .state import BackendLayout
from .system import MAX_PATH, Platform
from .torch_build import TorchBuild

GB = 1024 ** 3
TORCH_GB = {"cpu": 0.8, "cuda": 6.5, "mps": 0.5, "custom": 0.8}       # installed PyTorch per build, with room
DOWNLOAD_ROOM_GB = {"cpu": 0.5, "cuda": 3.5, "mps": 0.3, "custom": 0.5}   # pip's downloads while it installs
KIND_WORDS = {"cpu": "CPU build", "cuda": "CUDA build", "mps": "Apple silicon build", "custom": "as CUPID_TORCH asks"}
LIBRARIES_GB = 1.0            # the cupid wheel's other dependencies (OpenCV, ONNX Runtime, SciPy, ...)
WEIGHTS_ITEM = "the weights"
WEIGHTS_GB = 5.0              # `cupid download`: CUPID, TRELLIS parts, DINOv2, MoGe, SAM ViT-B, U2-Net
# The longest file path inside PyTorch's wheel, relative to site-packages (171 characters in 2.13.0,
# a licence file deep in its dist-info), plus the venv's own "env\Lib\site-packages\" (22) and room.
LONGEST_INSIDE_VENV = 171 + 22 + 7


class SetupProblem(Exception):
    """The set-up cannot start on this computer; the message says why and what to do."""


@dataclass
class SetupRequest:
    """What the operator hands the set-up process (as ``setup-request.json``)."""

    backend_dir: str
    wheel: str                                        # the cupid wheel bundled in the extension
    torch: TorchBuild
    pythons: list = field(default_factory=list)       # candidate commands, Blender's own Python first
    weights_dir: str = ""                             # CUPID_WEIGHTS_DIR for `cupid download`
    repair: bool = False

    def to_json(self) -> str:
        data = dict(self.__dict__, torch=self.torch.to_dict())
        return json.dumps(data, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "SetupRequest":
        data = json.loads(text)
        data["torch"] = TorchBuild.from_dict(data["torch"])
        return cls(**data)


def space_needed(torch_kind: str, done: list[str], weights_present: bool) -> list[tuple[str, float]]:
    """(what, GB) still to be written: the steps already done and weights already downloaded cost nothing."""
    items = []
    if "torch" not in done:
        items.append((f"PyTorch ({KIND_WORDS.get(torch_kind, torch_kind)})", TORCH_GB.get(torch_kind, TORCH_GB["cpu"])))
        items.append(("room for pip's downloads", DOWNLOAD_ROOM_GB.get(torch_kind, DOWNLOAD_ROOM_GB["cpu"])))
    if "cupid" not in done:
        items.append(("CUPID's libraries", LIBRARIES_GB))
    if "weights" not in done and not weights_present:
        items.append((WEIGHTS_ITEM, WEIGHTS_GB))
    return items


def by_disk(items: list[tuple[str, float]], backend: str, weights_cache: str) -> list[tuple[str, list]]:
    """(folder, items) per disk: the weights go to the weights cache, which may lie on another disk than
    the backend folder (both existing folders)."""
    weights = [i for i in items if i[0] == WEIGHTS_ITEM]
    rest = [i for i in items if i[0] != WEIGHTS_ITEM]
    try:
        same = os.stat(backend).st_dev == os.stat(weights_cache).st_dev
    except OSError:
        same = True
    return [(backend, items)] if same or not weights else [(backend, rest), (weights_cache, weights)]


def describe_space(items: list[tuple[str, float]]) -> str:
    return ", ".join(f"{what} {gb:.1f} GB" for what, gb in items)


def check_space(items: list[tuple[str, float]], free_bytes: int, where: str) -> Optional[str]:
    """None when `free_bytes` holds what the set-up still writes, else the message saying the figures."""
    need = sum(gb for _, gb in items)
    free = free_bytes / GB
    if need <= 0 or free >= need:
        return None
    return (f"Not enough disk space for the CUPID backend: it needs about {need:.1f} GB on {where} "
            f"({describe_space(items)}) and {free:.1f} GB are free. Free {need - free:.1f} GB or more "
            f"(or choose another Backend folder in the add-on preferences), then press Set Up Backend again")


def existing_parent(path: str) -> str:
    """The nearest folder of `path` that exists (where its free space is measured)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def long_path_problem(layout: BackendLayout, long_paths: bool) -> Optional[str]:
    """Windows without long paths: the message when PyTorch's deepest file would pass 260 characters."""
    if not layout.plat.windows or long_paths:
        return None
    deepest = len(layout.venv) + 1 + LONGEST_INSIDE_VENV
    if deepest < MAX_PATH:
        return None
    return (f"Windows limits paths to {MAX_PATH} characters and PyTorch's files would need up to {deepest} in "
            f"{layout.venv}. Turn on long paths (PowerShell as administrator: New-ItemProperty -Path "
            f"'HKLM:\\SYSTEM\\CurrentControlSet\\Control\\FileSystem' -Name LongPathsEnabled -Value 1 "
            f"-PropertyType DWORD -Force), or choose a short Backend folder in the add-on preferences "
            f"(such as C:\\cupid), then press Set Up Backend again")


def refuse_location(folder: str, forbidden: list[tuple[str, str]], plat: Platform) -> Optional[str]:
    """A message when `folder` lies inside one of the `forbidden` (path, what) places (Blender's
    installation, a source checkout), else None."""
    norm = plat.path.normcase(plat.path.abspath(folder)) if not plat.windows else plat.path.normcase(folder)
    for place, what in forbidden:
        if not place:
            continue
        root = plat.path.normcase(place)
        if norm == root or norm.startswith(root.rstrip("\\/") + plat.path.sep):
            return f"the backend folder {folder} lies inside {what} ({place}): choose a folder of your own"
    return None
