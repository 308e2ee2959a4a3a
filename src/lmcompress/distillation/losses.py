"""Distillation losses: pure functions over tensors, softmax in fp32, padding never contributes.

Shapes: B batch, T tokens, C classes (or V vocabulary), H hidden width, A heads, R relation heads.
`mask` is the attention mask [B, T] (1 = real token). Every loss returns a scalar; when the mask selects
nothing it returns a zero that still carries the graph (the all-masked guard), never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of values [B, T] (or [B]) over positions where mask is 1."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    total = mask.sum()
    if total == 0:
        return values.sum() * 0.0
    return (values * mask).sum() / total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None, kind: str = "kl") -> torch.Tensor:
    """Soft-target loss (Hinton et al.), scaled by T² so its gradients keep their size as T changes.

    student_logits, teacher_logits: [B, C] or [B, T, V]; mask: [B, T] for token-level logits.
    kind "kl": KL(teacher || student); "ce": soft cross-entropy (KL + teacher entropy, same gradient).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, (T,) C]
    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    t = t_log.exp()
    if kind == "kl":
        per_position = (t * (t_log - s)).sum(-1)  # [B] or [B, T]
    elif kind == "ce":
        per_position = -(t * s).sum(-1)
    else:
        raise ValueError(f"kind must be 'kl' or 'ce', got {kind!r}")
    return _masked_mean(per_position, mask if per_position.dim() == 2 else None) * temperature**2


def span_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                 temperature: float = 1.0, kind: str = "kl") -> torch.Tensor:
    """Question answering: logit KD of the answer-start and the answer-end distributions over positions, averaged.

    student_logits, teacher_logits: [B, T, 2] (start, end); mask: [B, T]. Padding positions leave both softmaxes
    (a large negative logit, not -inf, so 0 * log 0 never makes a NaN).
    """
    padding = (mask == 0).unsqueeze(1)  # [B, 1, T]
    blocked = -1e4 * temperature  # exp(-1e4) is exactly 0 in fp32
    s = student_logits.float().transpose(1, 2).masked_fill(padding, blocked)  # [B, 2, T]
    t = teacher_logits.float().transpose(1, 2).masked_fill(padding, blocked)
    return kd_loss(s, t, temperature, None, kind)


def reverse_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(student || teacher): mode-seeking, used for causal-LM distillation. Shapes as kd_loss."""
    s_log = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (s_log.exp() * (s_log - t_log)).sum(-1)
    return _masked_mean(per_position, mask if per_position.dim() == 2 else None) * temperature**2


def topk_kd_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_ids: torch.Tensor,
                 temperature: float = 1.0, mask: torch.Tensor | None = None, kind: str = "kl") -> torch.Tensor:
    """Logit KD against the teacher's top-k logits only, the teacher renormalised over its k tokens.

    student_logits [B, T, V] (or [N, V]); teacher_values, teacher_ids [B, T, k] (or [N, k]); mask [B, T].
    The student keeps its full softmax (its mass outside the k tokens is what the loss pushes down). With k = V
    this is exactly kd_loss.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_ids)  # [B, T, k]
    t_log = F.log_softmax(teacher_values.float() / temperature, dim=-1)  # [B, T, k]
    t = t_log.exp()
    if kind == "kl":
        per_position = (t * (t_log - s)).sum(-1)  # [B, T]
    elif kind == "ce":
        per_position = -(t * s).sum(-1)
    else:
        raise ValueError(f"kind must be 'kl' or 'ce', got {kind!r}")
    return _masked_mean(per_position, mask if per_position.dim() == 2 else None) * temperature**2


def sample_teacher_tokens(teacher_logits: torch.Tensor, temperature: float, k: int, generators: list[torch.Generator],
                          owners: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-sampling KD's sparse teacher: k token ids per position drawn with replacement from
    softmax(teacher_logits / T), each slot weighted 1/k.

    teacher_logits [B, T, V] with one generator per example, or [N, V] (masked positions) with owners [N] naming each
    position's example; an example's draws never depend on what else is in its batch -> (values, ids), shaped
    like teacher_logits with k for V, for `topk_kd_loss`: values are T * log(1/k), so the renormalised teacher there
    gives every slot 1/k and a token drawn c times gets c/k, whose expectation is the teacher's probability. The
    gradient of the loss is then unbiased (its value differs from the exact KL by a term constant in the student).
    """
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    vocab = probs.shape[-1]
    if owners is None:  # [B, T, V]: every position of row b belongs to example b
        owners = torch.arange(probs.shape[0], device=probs.device).repeat_interleave(probs.shape[1])
    flat = probs.reshape(-1, vocab)  # [R, V]
    ids = torch.empty(flat.shape[0], k, dtype=torch.long, device=flat.device)
    for example, generator in enumerate(generators):
        rows = owners == example
        if rows.any():
            ids[rows] = torch.multinomial(flat[rows], k, replacement=True, generator=generator)
    ids = ids.reshape(*probs.shape[:-1], k)
    values = torch.full(ids.shape, temperature * math.log(1.0 / k), dtype=torch.float32, device=ids.device)
    return values, ids


def embedding_mse(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor,
                  projection: torch.nn.Module | None = None) -> torch.Tensor:
    """Bi-encoder distillation: MSE between sentence embeddings, student [B, Hs] (projected to Ht when narrower)
    and teacher [B, Ht], in fp32."""
    student = projection(student_embedding) if projection is not None else student_embedding
    return F.mse_loss(student.float(), teacher_embedding.float())


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None,
               projection: torch.nn.Module | None = None) -> torch.Tensor:
    """TinyBERT hidden/embedding loss: MSE(student W, teacher) over real tokens.

    student_hidden [B, T, Hs], teacher_hidden [B, T, Ht]; projection maps Hs -> Ht when widths differ.
    """
    student = projection(student_hidden) if projection is not None else student_hidden  # [B, T, Ht]
    if student.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(f"hidden widths differ ({student.shape[-1]} vs {teacher_hidden.shape[-1]}) and no projection")
    per_token = (student.float() - teacher_hidden.float()).pow(2).mean(-1)  # [B, T]
    return _masked_mean(per_token, mask)


def cosine_hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None,
                       projection: torch.nn.Module | None = None) -> torch.Tensor:
    """DistilBERT's cosine embedding loss: 1 - cos(student, teacher) per real token. Shapes as hidden_mse."""
    student = projection(student_hidden) if projection is not None else student_hidden
    per_token = 1.0 - F.cosine_similarity(student.float(), teacher_hidden.float(), dim=-1)  # [B, T]
    return _masked_mean(per_token, mask)


def attention_loss(student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor | None,
                   kind: str = "mse") -> torch.Tensor:
    """TinyBERT attention transfer on attention probabilities [B, A, T, T] (heads must match).

    "mse": squared error over real (query, key) pairs; "kl": KL(teacher || student) per real query row.
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        raise ValueError(f"attention heads differ ({student_attn.shape[1]} vs {teacher_attn.shape[1]}); "
                         "use MiniLM relation distillation instead")
    s, t = student_attn.float(), teacher_attn.float()
    if mask is None:
        mask = torch.ones(s.shape[0], s.shape[-1], device=s.device)
    mask = mask.float()
    if kind == "mse":
        pair = mask[:, None, :, None] * mask[:, None, None, :]  # [B, 1, T, T]
        total = pair.sum() * s.shape[1]
        if total == 0:
            return s.sum() * 0.0
        return ((s - t).pow(2) * pair).sum() / total
    if kind == "kl":
        eps = 1e-12
        per_row = (t * ((t + eps).log() - (s + eps).log())).sum(-1)  # [B, A, T]
        rows = mask[:, None, :].expand_as(per_row)
        return _masked_mean(per_row.reshape(per_row.shape[0], -1), rows.reshape(rows.shape[0], -1))
    raise ValueError(f"kind must be 'mse' or 'kl', got {kind!r}")


def self_relation(x: torch.Tensor, mask: torch.Tensor | None, relation_heads: int) -> torch.Tensor:
    """MiniLM-v2 relation: split x [B, T, H] into R heads and return log softmax(x_r x_rᵀ / √d) [B, R, T, T]."""
    b, t, h = x.shape
    if h % relation_heads:
        raise ValueError(f"width {h} is not divisible by {relation_heads} relation heads")
    d = h // relation_heads
    heads = x.float().view(b, t, relation_heads, d).transpose(1, 2)  # [B, R, T, d]
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(d)  # [B, R, T, T]
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def minilm_relation_loss(student_x: torch.Tensor, teacher_x: torch.Tensor, mask: torch.Tensor | None,
                         relation_heads: int) -> torch.Tensor:
    """KL(teacher relation || student relation) over real query rows, for one of Q, K or V.

    student_x [B, T, Hs], teacher_x [B, T, Ht]: widths may differ (each split into the same R relation heads).
    """
    s_log = self_relation(student_x, mask, relation_heads)  # [B, R, T, T]
    t_log = self_relation(teacher_x, mask, relation_heads)
    per_row = (t_log.exp() * (t_log - s_log)).sum(-1)  # [B, R, T]
    if mask is None:
        return per_row.mean()
    rows = mask[:, None, :].expand_as(per_row).float()
    return _masked_mean(per_row.reshape(per_row.shape[0], -1), rows.reshape(rows.shape[0], -1))


def mix_hard_and_soft(hard_loss: torch.Tensor, soft_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha · hard-label loss + (1 − alpha) · soft (KD) loss."""
    return alpha * hard_loss + (1.0 - alpha) * soft_loss
