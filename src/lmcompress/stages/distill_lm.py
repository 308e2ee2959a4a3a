"""`lmcompress distill-lm`: distillation over the vocabulary on raw text, without labels.

- general distillation (mlm): an encoder teacher with an MLM head teaches a smaller encoder on masked text; the KD
  runs on the masked positions only (where the MLM head runs). A teacher without a trained MLM head (minilm-l6) can
  still teach through hidden states and MiniLM relations with `--alpha 1` (hard MLM loss + intermediate losses).
- causal-LM distillation (clm): e.g. smollm2-135m (Llama, GGUF) -> a GPT-2 student sharing its tokenizer, forward
  or reverse KL over the next-token distribution at every real position.
- a sparse teacher cache (`--top-k`: the k largest logits; `--sample-k`: k draws from the teacher, unbiased) for clm,
  and for mlm with static masking (the masked positions of each example are fixed, so its teacher outputs are too).

Data and masking are pre-training's (`data/pretraining.py`), scoring and the run layout too (`runkinds/lm.py`): the
student's run is an LM run with the same fixed validation set, so `evaluate` and `compare` treat it like a pre-trained
model, and a `pretrain` run of the same student architecture without a teacher is the baseline to compare against.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from ..config import LMDistillConfig, PretrainConfig, to_dict
from ..errors import LmcError
from ..models import presets
from ..models.families import check_objective
from ..models.load import LMTeacher, load_for_pretraining, load_lm_teacher, load_tokenizer, model_family, resolve
from ..objectives import IGNORE, LMOutputs, lm_forward, pretraining_loss
from ..data.pretraining import LMData, cache_root, collator, corpus, examples_fingerprint, prepare_data, training_set
from ..runkinds.lm import finish_lm_run, score_lm
from ..distributed import num_processes, on_all_processes, on_every_process
from ..runs.manifest import PruningRecord, TaskRecord, stage_manifest
from ..runs.rundir import RunDir, initial_scores
from ..training import fit
from ..distillation import losses
from ..distillation.cache import TopKCache, teacher_cache_root, teacher_fingerprint
from ..distillation.components import (POSITIONAL_LOSSES, DistillModule, QKVRecorder, intermediate_loss,
                                       intermediate_needs, parse_layer_map, projection_count, teacher_autocast,
                                       teacher_compute_precision)
from ..distillation.sharding import is_sharded, shard_teacher
from ..surgery.student import build_student, is_derived_spec, layer_count, model_width, parse_spec

log = logging.getLogger("lmcompress")


def as_pretrain_config(cfg: LMDistillConfig, objective: str) -> PretrainConfig:
    """The pre-training config that builds the same examples and validation set (recorded as the run's lm_config)."""
    return PretrainConfig(model=cfg.student, out=cfg.out, objective=objective, masking=cfg.masking,
                          mask_prob=cfg.mask_prob, whole_word=cfg.whole_word, chinese_words=cfg.chinese_words,
                          max_ngram=cfg.max_ngram, data=cfg.data, train=cfg.train)


def make_student(spec: str, teacher: LMTeacher, objective: str, seed: int):
    """-> (student LM, teacher layers copied or None, student tokenizer)"""
    if is_derived_spec(spec):
        student, copied = build_student(teacher.model, parse_spec(spec))
        return student, copied, teacher.tokenizer
    if presets.names_preset(spec):
        source = resolve(spec, tokenizer=None, role="student", new_vocab=True)  # the teacher's tokenizer is used
        check_objective(source.preset.family, objective)
        return load_for_pretraining(source, teacher.tokenizer, objective, seed), None, teacher.tokenizer
    source = resolve(spec, role="student")
    check_objective(model_family(source), objective)
    tokenizer = load_tokenizer(source.tokenizer_path)
    return load_for_pretraining(source, tokenizer, objective, seed), None, tokenizer


def _check_losses(cfg: LMDistillConfig, teacher: LMTeacher, objective: str) -> None:
    """The losses asked for must take something from this teacher."""
    loss_cfg = cfg.loss
    base = teacher.model.base_model_prefix + "."
    heads = [k for k in teacher.untrained if not k.startswith(base)]
    if heads and loss_cfg.alpha < 1.0:
        raise LmcError(f"teacher {cfg.teacher} has no trained {objective.upper()} head ({', '.join(heads[:3])} missing), "
                       "so its vocabulary distribution means nothing: use --alpha 1 with --hidden-weight/--minilm-weight "
                       "(MiniLM/TinyBERT-style general distillation), or pre-train the teacher's head first")
    if loss_cfg.pooled_weight > 0:
        raise LmcError("--pooled-weight compares one pooled vector per sequence (task distillation, `distill`); a "
                       "language model is distilled token by token: use --hidden-weight or --minilm-weight")
    intermediate = any(getattr(loss_cfg, f"{name}_weight") > 0 for name in POSITIONAL_LOSSES)
    if loss_cfg.alpha == 1.0 and not intermediate:
        raise LmcError("--alpha 1 without an intermediate loss (--hidden-weight, --minilm-weight, ...) takes nothing "
                       "from the teacher; that is `lmcompress pretrain`")


def _top_k_cache(cfg: LMDistillConfig, teacher: LMTeacher, data: LMData) -> TopKCache | None:
    """The sparse teacher cache (--top-k / --sample-k), addressed by example index; None when the teacher runs live."""
    sparse_k = cfg.top_k or cfg.sample_k
    if not sparse_k:
        return None
    seq_len = -(-cfg.data.max_length // 8) * 8  # the collator pads to a multiple of 8
    root = teacher_cache_root(cfg.data.cache_dir)
    examples = examples_fingerprint(data.train)
    if cfg.sample_k:  # sampled tokens depend on the temperature and the seed too
        examples += f"|sampled|T={cfg.loss.temperature}|seed={cfg.train.seed}"
    return on_every_process(lambda: TopKCache(root, teacher_fingerprint(teacher.path), examples, len(data.train),
                                              seq_len, sparse_k, teacher_compute_precision(cfg.teacher_precision)))


def check_vocabularies(teacher_tokenizer, student_tokenizer) -> None:
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise LmcError(
            f"the student's tokenizer ({len(student_tokenizer)} tokens) differs from the teacher's "
            f"({len(teacher_tokenizer)}): KD over the vocabulary needs the same tokens on both sides. Give a preset "
            "(it takes the teacher's tokenizer) or a derived spec like 'layers=2', or distil a task instead "
            "(lmcompress distill), where each side may tokenise the raw text itself")


def distill_lm(cfg: LMDistillConfig, stage: str = "distill-lm", pruning: PruningRecord | None = None,
               records: dict[str, Any] | None = None, request: dict[str, Any] | None = None,
               metrics_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`stage`/`pruning`/`records`/`request`/`metrics_extra` let stages built on it (prune-lm's recovery) name
    themselves in lmcompress.json, record what they did, add to metrics.json and recognise their own interrupted
    runs."""
    run = RunDir(cfg.out)
    request = request or to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    loss_cfg = cfg.loss
    teacher = load_lm_teacher(cfg.teacher, cfg.objective)
    objective = teacher.objective
    check_objective(teacher.family, objective, teacher.tokenizer)
    if (cfg.top_k or cfg.sample_k) and objective != "clm" and cfg.masking != "static":
        raise LmcError("--top-k / --sample-k cache the teacher's outputs per example, but dynamic masking gives the "
                       "teacher new inputs every epoch: add --masking static (one mask per example, drawn once), or "
                       "run the teacher live (--top-k 0)")
    _check_losses(cfg, teacher, objective)
    student, copied, student_tokenizer = make_student(cfg.student, teacher, objective, cfg.train.seed)
    check_vocabularies(teacher.tokenizer, student_tokenizer)
    tokenizer = teacher.tokenizer
    layer_map = parse_layer_map(loss_cfg.layer_map, layer_count(student.config), layer_count(teacher.model.config), copied)
    needs = intermediate_needs(student, teacher.model, loss_cfg, layer_map)
    pcfg = as_pretrain_config(cfg, objective)
    documents, corpus_source, train_ids, validation_ids = corpus(pcfg)
    log.info("student: %d layers (teacher layers %s), width %d, %s params vs teacher %s", layer_count(student.config),
             layer_map, model_width(student.config), f"{sum(p.numel() for p in student.parameters()):,}",
             f"{sum(p.numel() for p in teacher.model.parameters()):,}")

    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        transformers.set_seed(cfg.train.seed)
        data = prepare_data(pcfg, tokenizer, documents, train_ids, validation_ids, cache_root(pcfg))
        for i, example in enumerate(data.train):  # the teacher cache is addressed by example index
            example["idx"] = np.int64(i)
        log.info("%s examples: %d train, %d validation", objective, len(data.train), len(data.validation))
        module = DistillModule(student, model_width(student.config), model_width(teacher.model.config),
                               projection_count(loss_cfg, layer_map))
        cache = _top_k_cache(cfg, teacher, data)
        validation_collate = collator(tokenizer, objective)

        def evaluate_fn(m: DistillModule | torch.nn.Module) -> dict[str, float]:
            model = m.student if isinstance(m, DistillModule) else m
            return score_lm(model, data.validation, validation_collate, objective, cfg.train.eval_batch_size)

        sharding = shard_teacher(teacher.model) if cfg.fsdp else None
        teacher_scores = evaluate_fn(teacher.model)
        log.info("teacher: validation %s", ", ".join(f"{k} {v:.4f}" for k, v in teacher_scores.items()))
        initial = initial_scores(run.partial, cfg.resume, lambda: evaluate_fn(student))
        base_collate = collator(tokenizer, objective)

        def collate(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
            return base_collate(examples) | {"idx": torch.tensor([int(e["idx"]) for e in examples])}

        loss_fn = make_loss_fn(teacher.model, cache, needs, layer_map, cfg, objective, len(tokenizer))
        try:
            result = fit(module, training_set(pcfg, tokenizer, data), collate, cfg.train, loss_fn=loss_fn,
                         evaluate_fn=evaluate_fn, monitor="perplexity", higher_is_better=False,
                         run_folder=run.partial, resume=cfg.resume, description=f"distill-lm {Path(cfg.out).name}")
        finally:
            if cache is not None:
                cache.flush()
        student = module.student
        if needs.attentions:
            student.set_attn_implementation("sdpa")
        cache_stats = cache.stats() if cache is not None else None  # on every rank: it sums their counts
        if cache_stats is not None:
            log.info("teacher cache: %d hits, %d misses", cache_stats["hits"], cache_stats["misses"])
        return finish_lm_run(run, pcfg, student, tokenizer, data, result, initial, lambda train: stage_manifest(
            stage, str(teacher.path), to_dict(cfg), pruning=pruning, **(records or {}),
            data={"source": corpus_source, "seed": cfg.data.split_seed, **data.record},
            task=TaskRecord(objective, family=student.config.model_type), train=train, processes=num_processes(),
            teacher_sharding=sharding,
            lm_config=to_dict(pcfg), teacher_metrics=teacher_scores,
            student={"spec": cfg.student, "teacher_layers_copied": copied, "layer_map": layer_map,
                     "layers": layer_count(student.config), "hidden": model_width(student.config)},
            teacher_cache=cache_stats), metrics_extra)


def _at_positions(rows: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """rows [N, k] of the N positions where `where` [B, T] is True -> [B, T, k], zeros elsewhere."""
    out = rows.new_zeros(*where.shape, rows.shape[-1])
    out[where] = rows
    return out


def _sparse_teacher_tokens(cache: TopKCache, cfg: LMDistillConfig, batch, idx: torch.Tensor, objective: str,
                           vocab_size: int, teacher_forward, sharded: bool):
    """The teacher's k tokens and values per position, read from the cache or computed (top-k or sampled) and
    cached -> (values, ids, the teacher's outputs when it ran). clm: a row per position [B, T, k]; mlm: only the
    masked positions [N, k], stored at their places in the example's [T, k] rows."""
    t_out = None
    masked = batch["labels"] != IGNORE if objective != "clm" else None  # [B, T]
    cached = cache.has(idx)
    if sharded and not on_all_processes(cached):  # a sharded teacher runs on every rank or on none
        t_out = teacher_forward(batch)
    if cached:
        device = batch["input_ids"].device
        values, ids = cache.read(idx, batch["input_ids"].shape[1])
        values, ids = values.to(device), ids.to(device)
        return (values[masked], ids[masked], t_out) if masked is not None else (values, ids, t_out)
    t_out = t_out or teacher_forward(batch)
    t_logits = t_out.token_logits[..., :vocab_size].float()
    if cfg.sample_k:  # k draws from the teacher, seeded by (seed, example): the same whenever drawn
        generators = [torch.Generator(device=t_logits.device).manual_seed(cfg.train.seed * 1_000_003 + int(i))
                      for i in idx.tolist()]
        owners = masked.nonzero()[:, 0] if masked is not None else None  # mlm: each position's example
        values, ids = losses.sample_teacher_tokens(t_logits, cfg.loss.temperature, cache.k, generators, owners)
    else:
        values, ids = t_logits.topk(cache.k, dim=-1)  # [B, T, k] (mlm: [N, k])
    if masked is not None:
        cache.write(idx, *(_at_positions(x, masked) for x in (values, ids)))
    else:
        cache.write(idx, values, ids)
    return values.half().float(), ids, t_out  # what a cache hit returns, so resumed runs match bitwise


def make_loss_fn(teacher: torch.nn.Module, cache: TopKCache | None, needs, layer_map: list[int], cfg: LMDistillConfig,
                 objective: str, vocab_size: int):
    """loss(module, batch) = alpha * LM loss + (1 - alpha) * KD over the vocabulary + intermediate losses."""
    loss_cfg = cfg.loss
    teacher_qkv = QKVRecorder(teacher) if needs.qkv else None
    student_qkv: dict[int, QKVRecorder] = {}
    wants_logits = loss_cfg.alpha < 1.0
    sharded = is_sharded(teacher)

    def teacher_forward(batch: dict[str, torch.Tensor]) -> LMOutputs:
        with torch.no_grad(), teacher_autocast(cfg.teacher_precision, batch["input_ids"].device.type):
            return lm_forward(teacher, batch, objective, hidden_states=bool(needs.hidden),
                              attentions=needs.attentions)

    def soft_loss(s_logits: torch.Tensor, batch, idx: torch.Tensor, mask) -> tuple[torch.Tensor, LMOutputs | None]:
        """KD over the vocabulary -> (loss, the teacher's outputs when it ran)."""
        s_logits = s_logits[..., :vocab_size]  # padded vocabularies: rows beyond the tokenizer are never targets
        temperature = loss_cfg.temperature
        if cache is not None:
            values, ids, t_out = _sparse_teacher_tokens(cache, cfg, batch, idx, objective, vocab_size,
                                                        teacher_forward, sharded)
            return losses.topk_kd_loss(s_logits, values, ids, temperature, mask, loss_cfg.kd_kind), t_out
        t_out = teacher_forward(batch)
        t_logits = t_out.token_logits[..., :vocab_size].float()
        if cfg.kd_direction == "reverse":
            return losses.reverse_kd_loss(s_logits, t_logits, temperature, mask), t_out
        return losses.kd_loss(s_logits, t_logits, temperature, mask, loss_cfg.kd_kind), t_out

    def loss_fn(module: DistillModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = dict(batch)
        idx = batch.pop("idx")
        device = batch["input_ids"].device
        if not sharded and next(teacher.parameters()).device != device:
            teacher.to(device)
        if needs.qkv and id(module.student) not in student_qkv:
            student_qkv[id(module.student)] = QKVRecorder(module.student)
        out = lm_forward(module.student, batch, objective, hidden_states=bool(needs.hidden),
                         attentions=needs.attentions)
        # clm compares the next-token distributions at every real token; mlm logits [N, V] hold only masked positions
        mask = batch["attention_mask"] if objective == "clm" else None
        total: torch.Tensor | float = 0.0
        parts: dict[str, torch.Tensor] = {}  # each term as it enters the total, for the logs
        t_out = None
        if loss_cfg.alpha > 0:
            total = loss_cfg.alpha * pretraining_loss(out, batch, objective)
            parts["hard"] = total.detach()
        if wants_logits:
            soft, t_out = soft_loss(out.token_logits, batch, idx, mask)
            parts["kd"] = ((1.0 - loss_cfg.alpha) * soft).detach()
            total = total + (1.0 - loss_cfg.alpha) * soft
        if needs.hidden or needs.attentions or needs.qkv:
            t_out = t_out or teacher_forward(batch)
            t_hidden = {i: t_out.hidden_states[i].float() for i in needs.hidden}
            s_qkv = student_qkv[id(module.student)].outputs if needs.qkv else None
            inner, inner_parts = intermediate_loss(module, out.hidden_states, out.attentions, t_hidden,
                                                   t_out.attentions, s_qkv, teacher_qkv.outputs if needs.qkv else None,
                                                   batch["attention_mask"], layer_map, loss_cfg)
            total, parts = total + inner, parts | inner_parts
        return total, parts

    return loss_fn
