"""Checkpoint class names -> implementations, imported lazily so a pipeline loads only what it uses."""
from __future__ import annotations

import importlib
from typing import Any

import torch.nn as nn

from ..errors import CheckpointError

# "name in the checkpoint's .json" -> "module:attribute"
REGISTRY: dict[str, str] = {
    "SparseStructureEncoder": "cupid.models.sparse_structure_vae:SparseStructureEncoder",
    "SparseStructureDecoder": "cupid.models.sparse_structure_vae:SparseStructureDecoder",
    "SparseStructureFlowModel": "cupid.models.sparse_structure_flow:SparseStructureFlowModel",
    "SLatFlowModel": "cupid.models.structured_latent_flow:SLatFlowModel",
    "ElasticSLatFlowModel": "cupid.models.structured_latent_flow:ElasticSLatFlowModel",
    "SLatEncoder": "cupid.models.structured_latent_vae:SLatEncoder",
    "SLatGaussianDecoder": "cupid.models.structured_latent_vae:SLatGaussianDecoder",
    "SLatMeshDecoder": "cupid.models.structured_latent_vae:SLatMeshDecoder",
    # CUPID's configs name the training-time "elastic" variants; same weights, same forward
    "ElasticSLatEncoder": "cupid.models.structured_latent_vae:ElasticSLatEncoder",
    "ElasticSLatGaussianDecoder": "cupid.models.structured_latent_vae:ElasticSLatGaussianDecoder",
    "ElasticSLatMeshDecoder": "cupid.models.structured_latent_vae:ElasticSLatMeshDecoder",
    "VisualLatentConditioningSLatFlowModel":
        "cupid.models.visual_conditioning_flow:VisualLatentConditioningSLatFlowModel",
    "ElasticVisualLatentConditioningSLatFlowModel":
        "cupid.models.visual_conditioning_flow:ElasticVisualLatentConditioningSLatFlowModel",
}


def model_class(name: str) -> type[nn.Module]:
    """The class registered under a checkpoint name (imports its module on first use)."""
    target = REGISTRY.get(name)
    if target is None:
        raise CheckpointError(f"unknown network class {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(f"the implementation of {name} ({module_name}) is not available: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise CheckpointError(f"{module_name} does not define {attr}") from exc


def build_model(name: str, args: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate `name(**args)` without weights (works under `with torch.device('meta'):`)."""
    cls = model_class(name)
    try:
        return cls(**(args or {}))
    except (TypeError, ValueError) as exc:  # an unknown argument, or a known one with a value it refuses
        raise CheckpointError(f"bad arguments for {name}: {exc}") from exc
