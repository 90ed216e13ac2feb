"""Add-on preferences: how to reach the backend (a local process or a remote URL + token),
device, precision, model, weights cache, where results are kept, default sampler settings, and the
backend set-up (PyTorch build, backend folder; *Set Up Backend*, *Repair*, *Remove*).

The artist's zip records nothing of the machine it was built on: *Set Up Backend* fills the backend
Python and model in. A developer's zip, built from a checkout, carries ``defaults.json`` next to this
file (install/build_extension.py writes the checkout's venv python, weights directory and model there),
so it works without the set-up.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .setup_ui import draw_preferences_box

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "defaults.json")


def build_defaults() -> Dict[str, str]:
    """Values recorded at build time (empty when built without a checkout)."""
    try:
        with open(_DEFAULTS_FILE, encoding="utf-8") as fh:
            data = json.load(fh)
        return {k: str(v) for k, v in data.items() if isinstance(v, (str, int, float))}
    except (OSError, ValueError):
        return {}


_D = build_defaults()


def forget_backend_report(self: Any, context: Any) -> None:
    """Update callback of the settings that choose the backend: what the running backend reported
    (device, precision) is stale once one changes, so the panel shows the new choice until the
    backend started with it answers."""
    wm = getattr(context, "window_manager", None)
    if wm is not None and hasattr(wm, "cupid_device"):
        wm.cupid_device = ""
        wm.cupid_dtype = ""


class CUPID_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_kind: EnumProperty(
        name="Backend",
        items=[("LOCAL", "Local process", "Start `cupid serve` on this computer with the Python below"),
               ("REMOTE", "Remote service", "Use a `cupid serve` already running elsewhere, e.g. on a GPU box "
                                            "(its URL and token)")],
        default="LOCAL", update=forget_backend_report,
        description="Where reconstructions run")
    python_path: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default=_D.get("python", ""),
        update=forget_backend_report,
        description="Python of the environment where the `cupid` backend is installed: Set Up Backend fills "
                    "it in (a developer's install/setup.sh makes .venv/bin/python)")
    torch_build: EnumProperty(
        name="PyTorch build",
        items=[("AUTO", "Auto", "CUDA where an NVIDIA driver answers (the build its CUDA version runs), the "
                                "standard build on Apple silicon, else the CPU build"),
               ("CUDA", "CUDA", "The CUDA build from PyTorch's index (needs an NVIDIA GPU and driver; about 6.5 GB)"),
               ("CPU", "CPU", "The CPU build from PyTorch's CPU index, without CUDA libraries (about 0.8 GB)")],
        default="AUTO",
        description="Which PyTorch Set Up Backend installs (Repair installs it again after a change)")
    backend_dir: StringProperty(
        name="Backend folder", subtype="DIR_PATH", default="",
        description="Where Set Up Backend makes the backend environment (empty: Blender's user folder for this "
                    "extension). A short path such as C:\\cupid helps on Windows without long paths")
    remote_url: StringProperty(
        name="URL", default="http://127.0.0.1:8765",
        update=forget_backend_report,
        description="Address of the remote `cupid serve`, as it prints it on start "
                    "('reachable from other machines at http://…:8765'); through an SSH tunnel: "
                    "http://127.0.0.1:8765")
    remote_token: StringProperty(
        name="Token", subtype="PASSWORD", default="",
        description="The \"token\" value of the remote server's token file (`cupid serve` prints the file's "
                    "path on start; default ~/.cupid/server.json on that machine). It stays the same "
                    "across restarts of the server")
    device: EnumProperty(
        name="Device",
        items=[("auto", "Auto", "CUDA when available, else Apple MPS, else CPU"),
               ("cuda", "CUDA", "An NVIDIA GPU"), ("mps", "Apple MPS", "The GPU of an Apple Silicon Mac"),
               ("cpu", "CPU", "The processor: about half an hour per photo with the full model")],
        default="auto", update=forget_backend_report,
        description="What the local backend computes on")
    dtype: EnumProperty(
        name="Precision",
        items=[("auto", "Automatic", "float16 on an NVIDIA GPU (as the release runs); on a CPU bfloat16 where it "
                                     "has bf16 instructions (recent Xeons, Zen 4, Apple M2 and later), else "
                                     "float32; float32 on Apple MPS"),
               ("float32", "float32", "Full precision: the reference results, on any device; the most memory"),
               ("bfloat16", "bfloat16", "Half the memory of float32; fast on GPUs and on CPUs with bf16 "
                                        "instructions, several times slower than float32 on other CPUs"),
               ("float16", "float16", "Half the memory of float32; the release's precision on NVIDIA GPUs; "
                                      "slow on a CPU")],
        default="auto", update=forget_backend_report,
        description="The precision the local backend's networks compute in (the panel shows what it "
                    "chose)")
    model: StringProperty(
        name="Model", default=_D.get("model", "hbb1/Cupid"),
        update=forget_backend_report,
        description="Model id or local model directory. The default is what install/setup.sh set up; when "
                    "that was the tiny offline test model, the official weights replace it as soon as "
                    "`cupid download` has fetched them into the weights cache")
    weights_dir: StringProperty(
        name="Weights cache", subtype="DIR_PATH", default=_D.get("weights_dir", ""),
        description="Where the local backend keeps and finds downloaded weights (CUPID_WEIGHTS_DIR); empty: "
                    "the Hugging Face cache, where `cupid download` puts them by default")
    results_beside_blend: BoolProperty(
        name="Keep results beside the .blend file", default=True,
        description="Keep each result (scene.json, GLB, Gaussian PLY, overlay) in a 'cupid_results' folder "
                    "beside the saved .blend file; off, or while the file is not saved: the Results folder")
    results_dir: StringProperty(
        name="Results folder", subtype="DIR_PATH", default="",
        description="Where results are kept when not beside the .blend file (empty: 'cupid_results' in your "
                    "home folder)")
    default_steps: IntProperty(name="Steps", default=0, min=0, max=500,
                               description="Sampler steps when the panel's Steps is -1 (0: the model's "
                                           "default, 25)")
    default_seed: IntProperty(name="Seed", default=0, min=0,
                              description="Seed when the panel's Seed is -1")

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.prop(self, "backend_kind", expand=True)
        col = layout.column()
        if self.backend_kind == "LOCAL":
            draw_preferences_box(col, context, self)
            col.prop(self, "python_path")
            col.prop(self, "device")
            col.prop(self, "dtype")
            col.prop(self, "model")
            col.prop(self, "weights_dir")
        else:
            col.prop(self, "remote_url")
            col.prop(self, "remote_token")
        col = layout.column()
        col.prop(self, "results_beside_blend")
        col.prop(self, "results_dir")
        row = layout.row()
        row.prop(self, "default_steps")
        row.prop(self, "default_seed")


def get_prefs(context: Any = None) -> Any:
    """The add-on's preferences (None when the add-on is not enabled under this package)."""
    ctx = context or bpy.context
    addon = ctx.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


classes = (CUPID_AddonPreferences,)
