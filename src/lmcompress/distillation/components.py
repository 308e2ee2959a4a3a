"""Distillation components shared by the distill stages: the student with its width projections, what the
intermediate losses need and their weighted sum, Q/K/V recording for MiniLM relations, and the teacher's outputs
(live or from the cache)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.tokenize import collator
from ..errors import LmcError
from ..models.families import family_of
from ..models.outputs import adapt, mean_pool
from ..distributed import on_all_processes, process_state, wait_for_everyone
from ..training import resolve_precision
from . import losses
from .cache import TeacherCache
from .sharding import is_sharded
from ..surgery.student import default_layer_map, layer_count, model_width

log = logging.getLogger("lmcompress")
TEACHER_PREFIX = "teacher_"  # batch keys of the teacher's own tokens when the student has another tokenizer
TARGET_KEYS = ("labels", "start_positions", "end_positions")  # batch keys the teacher must not see
POSITIONAL_LOSSES = ("hidden", "embedding", "cosine", "attention", "minilm")  # *_weight losses that pair positions


def parse_layer_map(text: str, n_student: int, n_teacher: int, copied: list[int] | None) -> list[int]:
    """Teacher hidden-state index (1..n_teacher) for each student layer 1..n_student."""
    if text == "auto":
        return default_layer_map(copied, n_student, n_teacher)
    if text == "uniform":
        return default_layer_map(None, n_student, n_teacher)
    if text == "last":
        return [n_teacher - n_student + i + 1 for i in range(n_student)]
    mapping: dict[int, int] = {}
    for pair in text.split(","):
        s, sep, t = pair.partition(":")
        try:
            s_i, t_i = int(s), int(t)
        except ValueError:
            raise LmcError(f"layer map '{text}': use auto, uniform, last or pairs like '1:2,2:4'") from None
        if not sep or not 1 <= s_i <= n_student or not 1 <= t_i <= n_teacher:
            raise LmcError(f"layer map pair '{pair}': student layers are 1..{n_student}, teacher layers 1..{n_teacher}")
        mapping[s_i] = t_i
    if sorted(mapping) != list(range(1, n_student + 1)):
        raise LmcError(f"layer map '{text}' must give a teacher layer for every student layer 1..{n_student}")
    return [mapping[i] for i in range(1, n_student + 1)]


class DistillModule(nn.Module):
    """The student plus the learned projections that map its widths onto the teacher's (TinyBERT)."""

    def __init__(self, student: nn.Module, student_width: int, teacher_width: int, n_projections: int):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width) for _ in range(n_projections if student_width != teacher_width else 0))

    def project(self, i: int) -> nn.Module | None:
        return self.projections[i] if len(self.projections) else None


@dataclass
class Needs:
    """What the intermediate losses read from both models."""

    hidden: tuple[int, ...]  # teacher hidden-state indices needed (0 = embeddings)
    attentions: bool
    qkv: bool
    pooled: int | None = None  # the teacher's last hidden-state index, when its mean-pooled output is compared
    positional: bool = False  # a loss compares the models position by position (their tokens must line up)


def intermediate_needs(student: nn.Module, teacher: nn.Module, loss_cfg, layer_map: list[int]) -> Needs:
    """Check the intermediate losses fit these two models (one clear error each) -> what they need. Switches both
    models to eager attention when attention maps are compared (sdpa returns none)."""
    reads_hidden = loss_cfg.hidden_weight > 0 or loss_cfg.cosine_weight > 0  # attention maps need no hidden states
    if loss_cfg.attention_weight > 0 and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise LmcError(f"attention transfer needs equal head counts (student {student.config.num_attention_heads}, "
                       f"teacher {teacher.config.num_attention_heads}); use --minilm-weight instead")
    if loss_cfg.cosine_weight > 0 and model_width(student.config) != model_width(teacher.config):
        raise LmcError("the cosine loss needs equal hidden widths; use --hidden-weight (learned projection) instead")
    if loss_cfg.minilm_weight > 0:  # before any slow work: both models' Q/K/V, split into the relation heads
        for name, model in (("student", student), ("teacher", teacher)):
            for width in sorted(set(QKVRecorder.widths(model).values()), reverse=True):
                if width % loss_cfg.relation_heads:
                    raise LmcError(f"--relation-heads {loss_cfg.relation_heads} does not divide the {name} width "
                                   f"{width}")
    pooled = layer_count(teacher.config) if loss_cfg.pooled_weight > 0 else None
    hidden = ([0] if loss_cfg.embedding_weight > 0 else []) + (layer_map if reads_hidden else [])
    positional = any(getattr(loss_cfg, f"{name}_weight") > 0 for name in POSITIONAL_LOSSES)
    needs = Needs(hidden=tuple(sorted(set(hidden + ([pooled] if pooled else [])))),
                  attentions=loss_cfg.attention_weight > 0, qkv=loss_cfg.minilm_weight > 0, pooled=pooled,
                  positional=positional)
    if needs.attentions:  # attention probabilities need the eager kernel; inference keeps sdpa
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
    return needs


def projection_count(loss_cfg, layer_map: list[int]) -> int:
    """Learned width projections the hidden-state, embedding and pooled losses use (one per mapped layer, one for
    the embeddings, one for the pooled output)."""
    return ((len(layer_map) if loss_cfg.hidden_weight > 0 else 0) + (1 if loss_cfg.embedding_weight > 0 else 0)
            + (1 if loss_cfg.pooled_weight > 0 else 0))


def intermediate_loss(module: DistillModule, s_hidden, s_attn, t_hidden: dict[int, torch.Tensor], t_attn,
                      s_qkv: dict[str, torch.Tensor] | None, t_qkv: dict[str, torch.Tensor] | None,
                      mask: torch.Tensor, layer_map: list[int], loss_cfg,
                      t_pooled: torch.Tensor | None = None) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
    """The weighted sum of the embedding, hidden-state, cosine, attention, MiniLM relation and pooled-output losses,
    and each of them as it enters the sum (detached, for the logs).

    s_hidden: the student's hidden states (tuple of [B, T, Hs], index 0 = embeddings); t_hidden {index: [B, T, Ht]};
    s_attn / t_attn: tuples of [B, A, T, T]; s_qkv / t_qkv: last layer's query/key/value [B, T, H]; mask [B, T];
    t_pooled: the teacher's mean-pooled last hidden state [B, Ht] (over its own tokens, which may be another
    tokenizer's).
    """
    total: torch.Tensor | float = 0.0
    parts: dict[str, torch.Tensor] = {}

    def add(name: str, term: torch.Tensor) -> None:
        nonlocal total
        total = total + term  # summed in this order, as always: the total is bitwise what it was
        parts[name] = parts.get(name, 0.0) + term.detach()

    proj = 0
    if loss_cfg.embedding_weight > 0:
        add("embedding", loss_cfg.embedding_weight * losses.hidden_mse(s_hidden[0], t_hidden[0], mask,
                                                                      module.project(proj)))
        proj += 1
    for s_layer, t_layer in enumerate(layer_map, start=1):
        if loss_cfg.hidden_weight > 0:
            add("hidden", loss_cfg.hidden_weight * losses.hidden_mse(
                s_hidden[s_layer], t_hidden[t_layer], mask, module.project(proj)) / len(layer_map))
            proj += 1
        if loss_cfg.cosine_weight > 0:
            add("cosine", loss_cfg.cosine_weight * losses.cosine_hidden_loss(
                s_hidden[s_layer], t_hidden[t_layer], mask) / len(layer_map))
        if loss_cfg.attention_weight > 0:
            add("attention", loss_cfg.attention_weight * losses.attention_loss(
                s_attn[s_layer - 1], t_attn[t_layer - 1], mask, loss_cfg.attention_kind) / len(layer_map))
    if s_qkv is not None:
        for part in ("query", "key", "value"):
            add("minilm", loss_cfg.minilm_weight * losses.minilm_relation_loss(
                s_qkv[part], t_qkv[part].float(), mask, loss_cfg.relation_heads) / 3)
    if t_pooled is not None:  # its projection is the last one
        add("pooled", loss_cfg.pooled_weight * losses.embedding_mse(mean_pool(s_hidden[-1], mask), t_pooled,
                                                                    module.project(proj)))
    return total, parts


class QKVRecorder:
    """Forward hooks that keep the last layer's query/key/value projections [B, T, H] (MiniLM-v2)."""

    def __init__(self, model: nn.Module):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [module.register_forward_hook(self._keep(part))
                        for part, module in self.projections(model).items()]

    @staticmethod
    def projections(model: nn.Module) -> dict[str, nn.Module]:
        """The last layer's query, key and value projections (one LmcError line where the family has none)."""
        family = family_of(model.config)
        if family is None or family.query is None or family.shares_layers:
            raise LmcError("MiniLM relations need separate query/key/value projections per layer; "
                           f"{type(model).__name__} has none (its family fuses or shares them)")
        last = family.layer_list(model)[-1]
        return {part: family.part(last, path)
                for part, path in (("query", family.query), ("key", family.key), ("value", family.value))}

    @staticmethod
    def widths(model: nn.Module) -> dict[str, int]:
        """Output width of each projection (grouped-query attention: key and value narrower than the query)."""
        return {part: module.out_features for part, module in QKVRecorder.projections(model).items()}

    def _keep(self, part: str):
        def hook(module, inputs, output):
            self.outputs[part] = output

        return hook


def teacher_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's inputs in a training batch: its own tokens (TEACHER_PREFIX keys, when the student has another
    vocabulary), else the student's tokens without the targets."""
    own = {k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)}
    return own or {k: v for k, v in batch.items() if k not in TARGET_KEYS and k != "idx"}


def fill_teacher_cache(cache: TeacherCache, train_set, teacher_ids: list[list[int]], collate,
                       teacher_outputs: TeacherOutputs, batch_size: int) -> None:
    """Run the teacher once over every training row the cache lacks, in batches of similar length (little padding,
    so faster than meeting the rows in training order); under a launcher each rank takes every n-th of them."""
    missing = np.flatnonzero(~cache.complete())
    state = process_state()
    mine = sorted(missing.tolist(), key=lambda i: len(teacher_ids[i]))[state.process_index::state.num_processes]
    batches = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
    if teacher_outputs.sharded and len(missing):
        # every rank runs the sharded teacher equally often: one with fewer rows repeats a batch and keeps nothing
        most = -(-len(missing) // state.num_processes)  # rank 0's share, the largest
        batches += [None] * (-(-most // batch_size) - len(batches))
    if len(missing):
        log.info("teacher pass over %d training rows (cached for every epoch)", len(missing))
        device = state.device
        if not teacher_outputs.sharded:
            teacher_outputs.teacher.to(device)
        for rows in batches:
            batch = collate([train_set[int(i)] for i in (rows if rows is not None else mine[:1] or [0])])
            inputs = {k: v.to(device) for k, v in teacher_inputs(batch).items()}
            teacher_outputs.compute(inputs, batch["idx"], keep=rows is not None)
    wait_for_everyone()


class PairedCollator:
    """Pads the student's tokens with its tokenizer and the teacher's (TEACHER_PREFIX keys) with the teacher's."""

    def __init__(self, student_tokenizer, teacher_tokenizer):
        self.student, self.teacher = collator(student_tokenizer), collator(teacher_tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        own = [{k: v for k, v in f.items() if not k.startswith(TEACHER_PREFIX)} for f in features]
        theirs = [{k[len(TEACHER_PREFIX):]: v for k, v in f.items() if k.startswith(TEACHER_PREFIX)} for f in features]
        return dict(self.student(own)) | {TEACHER_PREFIX + k: v for k, v in self.teacher(theirs).items()}


def teacher_compute_precision(precision: str) -> str:
    """`auto` -> "bf16" where the hardware has bf16 kernels (AMX or AVX512-BF16, a GPU with bf16), else "fp32"."""
    if precision == "auto":
        return "bf16" if resolve_precision("auto") == "bf16" else "fp32"
    return precision


def teacher_autocast(precision: str, device_type: str):
    """The context the teacher's forward runs in: bf16 autocast for a bf16 teacher, else none (fp32)."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) \
        if teacher_compute_precision(precision) == "bf16" else contextlib.nullcontext()


class TeacherOutputs:
    """The teacher's outputs for a batch of training rows: read back from the cache, or computed (and then cached)."""

    def __init__(self, teacher, cache: TeacherCache | None, needs: Needs, teacher_precision: str):
        self.teacher, self.cache, self.needs, self.precision = teacher, cache, needs, teacher_precision
        self.sharded = is_sharded(teacher)

    def __call__(self, inputs: dict[str, torch.Tensor], idx: torch.Tensor):
        """inputs: the teacher's tokens (no labels) -> logits [B, C], {hidden index: [B, T, Ht]}, attentions or None"""
        cached = self.cache is not None and self.cache.has(idx)
        # a sharded teacher runs on every rank or on none (every rank must ask): unless all have their rows cached
        runs = not on_all_processes(cached) if self.sharded else not cached
        computed = self.compute(inputs, idx, keep=not cached) if runs else None
        if not cached:
            return computed
        logits, hidden = self.cache.read(idx, inputs["input_ids"].shape[1])
        device = inputs["input_ids"].device
        return logits.to(device), {k: v.to(device) for k, v in hidden.items()}, None

    def compute(self, inputs: dict[str, torch.Tensor], idx: torch.Tensor, keep: bool = True):
        """The teacher's forward; with `keep`, its outputs go into the cache."""
        with torch.no_grad(), teacher_autocast(self.precision, inputs["input_ids"].device.type):
            out = adapt(self.teacher(**inputs, output_hidden_states=bool(self.needs.hidden),
                                     output_attentions=self.needs.attentions), inputs)
        hidden = {i: out.hidden_states[i].float() for i in self.needs.hidden}
        logits = out.logits.float()
        if self.cache is not None and keep:
            self.cache.write(idx, logits, hidden)
            # the cache keeps hidden states in fp16: use the same values live, so a batch gives the same loss
            # whether its teacher outputs were computed now or read back (a resumed run then matches bitwise)
            hidden = {i: h.half().float() for i, h in hidden.items()}
        return logits, hidden, out.attentions
