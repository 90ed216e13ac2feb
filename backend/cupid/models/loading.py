"""Load official TRELLIS/CUPID checkpoints (`NAME.json` + `NAME.safetensors`) strictly.

The network is built on the meta device (no random init, no memory), the safetensors weights are
checked against it key by key and assigned, then its torso is cast to the dtype asked for (any
device honours any of float32/bfloat16/float16; which one a device should run is
`cupid.models.dtype.resolve_dtype`'s choice). Without one the checkpoint's own default applies:
float16 on a GPU when it was trained that way (`use_fp16`), float32 on the CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..hub import hub_file
from .dtype import place_weights
from .registry import build_model


def parse_hf_stem(stem: str) -> tuple[str, str]:
    """'owner/repo/ckpts/NAME' -> ('owner/repo', 'ckpts/NAME')."""
    parts = [p for p in str(stem).split("/") if p]
    if len(parts) < 3 or str(stem).startswith(("/", ".", "~")):
        raise CheckpointError(f"{stem!r} is neither a local checkpoint stem (STEM.json + STEM.safetensors) "
                              "nor a Hugging Face path of the form owner/repo/path/NAME")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def resolve_checkpoint(stem: str | os.PathLike) -> tuple[Path, Path]:
    """Local files if both exist, else a Hugging Face download (cache first)."""
    s = str(stem)
    cfg, weights = Path(s + ".json"), Path(s + ".safetensors")
    if cfg.is_file() and weights.is_file():
        return cfg, weights
    if cfg.is_file() or weights.is_file() or Path(s).parent.is_dir() and Path(s).is_absolute():
        missing = [str(p) for p in (cfg, weights) if not p.is_file()]
        raise CheckpointError(f"checkpoint {s!r} is incomplete: missing {', '.join(missing)}")
    repo_id, name = parse_hf_stem(s)
    return (hub_file(repo_id, f"{name}.json", what=f"checkpoint {name} of {repo_id}"),
            hub_file(repo_id, f"{name}.safetensors", what=f"checkpoint {name} of {repo_id}"))


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str = "checkpoint") -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (nothing loads partially)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, network {expected[k]})"
                       for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped keys: {', '.join(misshaped)}")
        err = CheckpointError(f"{label} does not match its network: " + "; ".join(parts))
        err.missing, err.unexpected, err.misshaped = missing, unexpected, misshaped  # type: ignore[attr-defined]
        raise err


def _target_dtype(device: torch.device, dtype: torch.dtype | None, use_fp16: bool) -> torch.dtype:
    """The dtype asked for, else the checkpoint's default for the device (float32 on the CPU)."""
    if dtype is not None:
        return dtype
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if use_fp16 else torch.float32


def load_model(stem: str | os.PathLike, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, keep_low: bool = True, **overrides: Any) -> nn.Module:
    """Build the network named in STEM.json and load STEM.safetensors strictly, in eval mode.

    `dtype` is the torso compute dtype, honoured on every device (float16 on the CPU too: slow but
    as asked); None: the checkpoint's default (float16 on a GPU when `use_fp16`, else float32).
    Embedders, input/output layers and norms stay float32 as in the original mixed-precision setup.
    `keep_low`: a float32 torso keeps the checkpoint's float16 weights and casts them at each use (exact;
    half the memory); False holds float32 copies.
    """
    from safetensors.torch import load_file

    cfg_path, weights_path = resolve_checkpoint(stem)
    try:
        cfg = json.loads(cfg_path.read_text())
        name, args = cfg["name"], dict(cfg.get("args", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint config {cfg_path}: {exc}") from exc
    args.update(overrides)
    with torch.device("meta"):
        model = build_model(name, args)
    try:
        # own copies: tensors left on the file's memory map would keep every touched page of the
        # checkpoint resident for as long as any one of them lives (3 GB for the full pipeline)
        state = {k: v.clone() for k, v in load_file(str(weights_path), device="cpu").items()}
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint weights {weights_path}: {exc}") from exc
    check_state_dict(model, state, label=f"checkpoint {weights_path.name} ({name})")
    model.load_state_dict(state, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(f"checkpoint {weights_path.name} left tensors unset: {', '.join(leftovers)}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    target = _target_dtype(dev, dtype, bool(args.get("use_fp16", False)))
    place_weights(model, target, keep_low=keep_low)
    model.to(dev)
    model.eval().requires_grad_(False)
    return model
