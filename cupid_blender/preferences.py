"""Add-on preferences: how to reach the backend (a local process or a remote URL + token),
device, model, weights cache, and default sampler settings.

Defaults for the local backend come from ``defaults.json`` next to this file when the extension
was built from a checkout (install/build_extension.py writes the checkout's venv python and
weights directory there), so a fresh install works without typing paths.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

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


class CUPID_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_kind: EnumProperty(
        name="Backend",
        items=[("LOCAL", "Local process", "Start `cupid serve` with the python below"),
               ("REMOTE", "Remote service", "Use an already running `cupid serve` (URL + token)")],
        default="LOCAL")
    python_path: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default=_D.get("python", "python3"),
        description="Python of the environment where the `cupid` backend is installed")
    remote_url: StringProperty(name="URL", default="http://127.0.0.1:8765",
                               description="Base URL of a running `cupid serve`")
    remote_token: StringProperty(name="Token", subtype="PASSWORD", default="",
                                 description="Bearer token printed by `cupid serve`")
    device: EnumProperty(
        name="Device",
        items=[("auto", "Auto", "CUDA when available, else CPU"), ("cuda", "CUDA", ""),
               ("mps", "Apple MPS", ""), ("cpu", "CPU", "")],
        default="auto")
    model: StringProperty(name="Model", default=_D.get("model", "hbb1/Cupid"),
                          description="Model id or local checkpoint directory")
    weights_dir: StringProperty(name="Weights cache", subtype="DIR_PATH", default=_D.get("weights_dir", ""),
                                description="Where downloaded weights are kept (empty: backend default)")
    default_steps: IntProperty(name="Steps", default=0, min=0, max=500,
                               description="Sampler steps per stage (0: the model's default)")
    default_seed: IntProperty(name="Seed", default=0, min=0)

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.prop(self, "backend_kind", expand=True)
        col = layout.column()
        if self.backend_kind == "LOCAL":
            col.prop(self, "python_path")
            col.prop(self, "device")
            col.prop(self, "model")
            col.prop(self, "weights_dir")
        else:
            col.prop(self, "remote_url")
            col.prop(self, "remote_token")
        row = layout.row()
        row.prop(self, "default_steps")
        row.prop(self, "default_seed")


def get_prefs(context: Any = None) -> Any:
    """The add-on's preferences (None when the add-on is not enabled under this package)."""
    ctx = context or bpy.context
    addon = ctx.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


classes = (CUPID_AddonPreferences,)
