"""Pre-training objectives: the losses (pure functions, softmax in fp32) and one forward per model family.

MLM logits are computed only at the predicted positions: the vocabulary projection is the largest matrix of a
small BERT, and ~85% of its rows would be thrown away by the loss. `lm_forward` therefore runs the encoder, picks
the predicted positions, and applies the family's own MLM head (and NSP/SOP head) modules to them; unit tests
check the result against the full transformers heads (`BertForPreTraining(...).loss` etc.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data.masking import IGNORE
from .errors import LmcError
from .models.families import ENCODER_FAMILIES, family_of



def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [N, V] (or [B, T, V]), labels [N] (or [B, T]) with IGNORE where not predicted -> mean CE."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def sentence_pair_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, 2], labels [B] (NSP: 1 = random next; SOP: 1 = swapped) -> mean CE."""
    return F.cross_entropy(logits.float(), labels)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] at each position predict the next token: labels [B, T] shifted by one, IGNORE skipped."""
    return masked_lm_loss(logits[:, :-1, :], labels[:, 1:])


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """-> (sum of CE over predicted tokens, number of them, number predicted correctly) for perplexity/accuracy."""
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)
    keep = flat_labels != IGNORE
    if not keep.any():
        return 0.0, 0, 0
    flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    total = F.cross_entropy(flat_logits, flat_labels, reduction="sum").item()
    return total, int(keep.sum()), int((flat_logits.argmax(-1) == flat_labels).sum())


@dataclass
class LMOutputs:
    token_logits: torch.Tensor  # mlm: [N, V] at the N predicted positions; clm: [B, T, V]
    token_labels: torch.Tensor  # mlm: [N]; clm: [B, T] (unshifted; the loss shifts)
    pair_logits: torch.Tensor | None = None  # [B, 2] for NSP/SOP
    hidden_states: tuple[torch.Tensor, ...] | None = None  # when asked: [B, T, H] each, index 0 = embeddings
    attentions: tuple[torch.Tensor, ...] | None = None  # when asked: [B, A, T, T] per layer


def _module(model: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        model = getattr(model, name)
    return model


def lm_forward(model: nn.Module, batch: dict[str, torch.Tensor], objective: str, hidden_states: bool = False,
               attentions: bool = False) -> LMOutputs:
    """Run a pre-training model on a collated batch (see data.lm.PretrainCollator); distillation also asks for the
    hidden states and attention maps."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pair_labels", "idx")}
    extra = {"output_hidden_states": True} if hidden_states else {}
    if attentions:
        extra["output_attentions"] = True
    if objective == "clm":
        out = model(**inputs, return_dict=True, **extra)
        return LMOutputs(out.logits, labels, hidden_states=out.hidden_states if hidden_states else None,
                         attentions=out.attentions if attentions else None)
    family = family_of(model.config)
    if family is None or family.mlm_head is None:
        raise LmcError(f"masked-LM pre-training supports {', '.join(ENCODER_FAMILIES)}; this model is "
                       f"{model.config.model_type}")
    mlm_path, pair_path = family.mlm_head, family.pair_head
    out = model.base_model(**inputs, return_dict=True, **extra)
    hidden = out.last_hidden_state  # [B, T, H]
    predicted = labels != IGNORE  # [B, T]
    token_logits = _module(model, mlm_path)(hidden[predicted])  # [N, V]
    pair_logits = None
    if objective != "mlm":
        if pair_path is None:
            raise LmcError(f"{family.name} has no sentence-pair head; use --objective mlm")
        pair_logits = _module(model, pair_path)(out.pooler_output)  # [B, 2]
    return LMOutputs(token_logits, labels[predicted], pair_logits, out.hidden_states if hidden_states else None,
                     out.attentions if attentions else None)


def pretraining_loss(outputs: LMOutputs, batch: dict[str, torch.Tensor], objective: str) -> torch.Tensor:
    """MLM (+ NSP/SOP, summed with equal weight as in BERT and ALBERT) or CLM."""
    if objective == "clm":
        return causal_lm_loss(outputs.token_logits, outputs.token_labels)
    loss = masked_lm_loss(outputs.token_logits, outputs.token_labels)
    if outputs.pair_logits is not None:
        loss = loss + sentence_pair_loss(outputs.pair_logits, batch["pair_labels"])
    return loss
