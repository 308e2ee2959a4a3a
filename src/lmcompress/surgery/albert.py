"""ALBERT conversion of a BERT teacher, as a distillation student: `--student 'albert;embedding=128;shared'`.

- Factorised embeddings: the teacher's word embedding W [V, H] ~ (U_E S_E) [V, E] x Vh_E [E, H] by truncated SVD;
  position and token-type embeddings are projected into the same E-dim subspace. ALBERT normalises in E dims before
  mapping to H, so the mapping carries the teacher's LayerNorm gain/bias and a sqrt(H/E) rescale (a unit-variance
  E-vector has norm sqrt(E), a unit-variance H-vector sqrt(H)). An approximation that distillation then corrects.
- Cross-layer sharing (`shared`): one layer, the average of the chosen teacher layers (`shared=K`: teacher layer K),
  applied at every depth. Without `shared`, each depth keeps its own copied teacher layer (embeddings still factorised).
- `layers=N`: depth N (teacher layers evenly spaced, always including the last).
The result is a real `AlbertForSequenceClassification` checkpoint that transformers reloads alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AlbertConfig, AlbertForSequenceClassification, PreTrainedModel

from .student import evenly_spaced_layers
from ..errors import LmcError
from ..models.families import family_name
from ..models.heads import saved_head

LAYER_PARTS = {  # BERT layer parameter -> ALBERT layer parameter
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.dense",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "ffn",
    "output.dense": "ffn_output",
    "output.LayerNorm": "full_layer_layer_norm",
}


@dataclass(frozen=True)
class AlbertSpec:
    embedding: int = 128
    shared: bool = False
    shared_from: int | None = None  # teacher layer to initialise the shared layer from; None = average
    layers: int | None = None


def parse_albert_spec(spec: str) -> AlbertSpec | None:
    """`albert;embedding=128;shared[=K];layers=N` -> AlbertSpec; None when `spec` is not an ALBERT spec."""
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    if not parts or parts[0] != "albert":
        return None
    values: dict[str, object] = {}
    for part in parts[1:]:
        key, sep, raw = (x.strip() for x in part.partition("="))
        try:
            if key == "shared":
                values["shared"] = True
                values["shared_from"] = int(raw) if sep else None
            elif key in ("embedding", "layers") and sep:
                values[key] = int(raw)
            else:
                raise LmcError(f"ALBERT student item '{part}' is not one of embedding=E, shared, shared=K, layers=N")
        except ValueError:
            raise LmcError(f"ALBERT student item '{part}': expected a whole number") from None
    for key in ("embedding", "layers"):
        if key in values and values[key] < 1:
            raise LmcError(f"ALBERT student: {key} must be >= 1, got {values[key]}")
    return AlbertSpec(**values)


def factorise_embedding(weight: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W [V, H] -> (E_word [V, E], basis [E, H]) with E_word @ basis the best rank-E approximation of W."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)  # [V, H], [H], [H, H]
    return u[:, :size] * s[:size], vh[:size]


def albert_from_bert(teacher: PreTrainedModel, spec: AlbertSpec) -> tuple[AlbertForSequenceClassification, list[int]]:
    """-> (ALBERT student initialised from the teacher, teacher layers it was built from)."""
    cfg = teacher.config
    if saved_head(cfg) is not None:
        raise LmcError(f"ALBERT students are built for sequence-classification teachers; this one is a {saved_head(cfg)} "
                       "model (use layers=N or a preset student)")
    if family_name(cfg.model_type) != "bert":
        raise LmcError(f"ALBERT conversion needs a BERT teacher (same embeddings layout); this one is {cfg.model_type}")
    n_teacher, width = cfg.num_hidden_layers, cfg.hidden_size
    depth = spec.layers or n_teacher
    if depth > n_teacher:
        raise LmcError(f"layers={depth}: the teacher has only {n_teacher} layers")
    if spec.embedding >= width:
        raise LmcError(f"embedding={spec.embedding} must be smaller than the teacher's hidden width {width}")
    if spec.shared_from is not None and not 0 <= spec.shared_from < n_teacher:
        raise LmcError(f"shared={spec.shared_from}: the teacher has layers 0..{n_teacher - 1}")
    chosen = evenly_spaced_layers(n_teacher, depth)
    config = AlbertConfig(
        vocab_size=cfg.vocab_size, embedding_size=spec.embedding, hidden_size=width, num_hidden_layers=depth,
        num_hidden_groups=1 if spec.shared else depth, inner_group_num=1, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id, num_labels=cfg.num_labels,
        id2label=cfg.id2label, label2id=cfg.label2id, problem_type=cfg.problem_type, classifier_dropout_prob=0.1)
    student = AlbertForSequenceClassification(config)
    t = {k: v.detach().float() for k, v in teacher.state_dict().items()}
    new: dict[str, torch.Tensor] = {}

    word, basis = factorise_embedding(t["bert.embeddings.word_embeddings.weight"], spec.embedding)  # [V, E], [E, H]
    new["albert.embeddings.word_embeddings.weight"] = word
    for name in ("position_embeddings", "token_type_embeddings"):
        new[f"albert.embeddings.{name}.weight"] = t[f"bert.embeddings.{name}.weight"] @ basis.T  # [*, E]
    new["albert.embeddings.LayerNorm.weight"] = torch.ones(spec.embedding)
    new["albert.embeddings.LayerNorm.bias"] = torch.zeros(spec.embedding)
    gain, bias = t["bert.embeddings.LayerNorm.weight"], t["bert.embeddings.LayerNorm.bias"]  # [H]
    new["albert.encoder.embedding_hidden_mapping_in.weight"] = gain[:, None] * basis.T * math.sqrt(width / spec.embedding)
    new["albert.encoder.embedding_hidden_mapping_in.bias"] = bias

    groups = [chosen] if spec.shared else [[layer] for layer in chosen]
    if spec.shared and spec.shared_from is not None:
        groups = [[spec.shared_from]]
    for g, sources in enumerate(groups):
        for bert_part, albert_part in LAYER_PARTS.items():
            for kind in ("weight", "bias"):
                stack = torch.stack([t[f"bert.encoder.layer.{i}.{bert_part}.{kind}"] for i in sources])
                new[f"albert.encoder.albert_layer_groups.{g}.albert_layers.0.{albert_part}.{kind}"] = stack.mean(0)
    for kind in ("weight", "bias"):
        new[f"albert.pooler.{kind}"] = t[f"bert.pooler.dense.{kind}"]
        new[f"classifier.{kind}"] = t[f"classifier.{kind}"]
    missing = set(student.state_dict()) - set(new)
    if missing:
        raise LmcError(f"ALBERT conversion left parameters unset: {sorted(missing)[:5]}")
    student.load_state_dict(new)
    return student, chosen
