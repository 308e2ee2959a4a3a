"""One output type for every family, so later stages (distillation, evaluation) never index model-specific tuples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelOutputs:
    # [B, C] sequence tasks, [B] regression squeezed by callers, [B, T, C] token tasks, [B, T, V] language models,
    # [B, T, 2] question answering (span start and end logits per position)
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # scalar when labels were given
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (L + 1) x [B, T, H], embeddings first
    attentions: tuple[torch.Tensor, ...] | None = None  # L x [B, heads, T, T] (needs an eager attention)
    attention_mask: torch.Tensor | None = None  # [B, T], 1 = real token


def forward(model: nn.Module, batch: dict[str, torch.Tensor], *, hidden_states: bool = False,
            attentions: bool = False) -> ModelOutputs:
    """Run any transformers model on a batch and adapt its output."""
    out = model(**batch, output_hidden_states=hidden_states, output_attentions=attentions, return_dict=True)
    return adapt(out, batch, hidden_states, attentions)


def adapt(out, batch: dict[str, torch.Tensor], hidden_states: bool = True, attentions: bool = True) -> ModelOutputs:
    """A transformers output -> ModelOutputs (question answering's start/end logits stacked on a last axis)."""
    logits = out.logits if hasattr(out, "logits") else torch.stack([out.start_logits, out.end_logits], dim=-1)
    return ModelOutputs(
        logits=logits,
        loss=getattr(out, "loss", None),
        hidden_states=getattr(out, "hidden_states", None) if hidden_states else None,
        attentions=getattr(out, "attentions", None) if attentions else None,
        attention_mask=batch.get("attention_mask"),
    )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as sentence-transformers makes it: hidden [B, T, H] averaged over real tokens -> [B, H]."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
