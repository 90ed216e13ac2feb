"""Small module helpers shared by the networks."""
from __future__ import annotations

import torch.nn as nn


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        if not p.is_meta:
            p.detach().zero_()
    return module
