"""PyTorch dynamic int8: Linear weights int8, activations quantised per batch at run time (CPU inference)."""

from __future__ import annotations

import warnings

import torch
from torch.ao.quantization import quantize_dynamic


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Linear weights -> int8, activations quantised per batch at run time (CPU inference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the API still works in torch 2.13
        return quantize_dynamic(model.eval().cpu(), {torch.nn.Linear}, dtype=torch.qint8)
