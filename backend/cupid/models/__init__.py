"""TRELLIS/CUPID networks by their checkpoint class names, and strict checkpoint loading."""
from __future__ import annotations

from typing import Any

from .loading import check_state_dict, load_model, parse_hf_stem, resolve_checkpoint
from .registry import REGISTRY, build_model, model_class

__all__ = ["REGISTRY", "build_model", "model_class", "load_model", "check_state_dict", "parse_hf_stem",
           "resolve_checkpoint"]


def __getattr__(name: str) -> Any:
    """`cupid.models.SLatFlowModel` etc. resolve lazily through the registry."""
    if name in REGISTRY:
        return model_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
