"""`lmcompress prune-lm`: width and depth pruning of a causal LM, Minitron-style, then recovery by distillation.

Importance is scored on training blocks of the corpus with the LM loss: query heads, FFN neurons and embedding
channels by |activation x gradient| (as `prune` scores encoders), layers by how much each changes the residual stream
(1 - cosine of its input and output, Minitron's and ShortGPT's block importance). Under grouped-query attention a KV
head goes whole with its group, and every kept group keeps the same number of its best query heads. The pruned model
is a standard checkpoint of the teacher's family (LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel ...), then
recovered by `distill-lm` from the unpruned model with a top-k teacher cache. `--baseline` trains the same shape from
random init on the same blocks, in the same order, for the same steps (OUT-baseline), the measure of what the
teacher's weights were worth.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import LMDistillConfig, PretrainConfig, PruneLMConfig, to_dict
from .distill_lm import distill_lm
from ..errors import LmcError
from ..models.families import FAMILIES, require_family
from ..models.load import lm_family, load_lm_teacher
from ..data.pretraining import cache_root, collator, corpus, prepare_data
from ..runkinds.lm import lm_metrics_payload, score_lm
from ..distributed import is_main_process, wait_for_everyone
from ..runs.manifest import METRICS, PruningRecord, TaskRecord, is_complete, stage_manifest
from ..runs.rundir import RunDir, finish_stage
from .pretrain import pretrain
from ..surgery.prune import importance_scores, plan, prune_model

log = logging.getLogger("lmcompress")


def prune_lm(cfg: PruneLMConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)  # fail on a bad --out before minutes of scoring
    if cfg.baseline and not _baseline_done(cfg):
        RunDir(_baseline_out(cfg)).check(cfg.overwrite, None, to_dict(_baseline_config(cfg)))
    family = lm_family(cfg.model)  # refuse before loading weights
    if family not in ("gpt2", "llama"):
        what = "an encoder: use `lmcompress prune` for encoders" if family in {f.name for f in FAMILIES} else \
            "an architecture without pruning rules"
        raise LmcError(f"prune-lm prunes causal LMs (Llama, SmolLM2, Qwen2/3, Mistral, GPT-2); {cfg.model} is a "
                       f"{family} model, {what}")
    teacher = load_lm_teacher(cfg.model, "clm")
    family = require_family(teacher.model.config, "prune-lm", narrow=True)
    target = dataclasses.replace(plan(teacher.model.config, cfg.heads, cfg.ffn, cfg.layers, cfg.hidden, cfg.kv_heads),
                                 layer_score="cosine")
    pcfg = PretrainConfig(model=cfg.model, out=cfg.out, objective="clm", data=cfg.data, train=cfg.train)
    documents, source, train_ids, validation_ids = corpus(pcfg)
    data = prepare_data(pcfg, teacher.tokenizer, documents, train_ids, validation_ids, cache_root(pcfg))
    blocks = data.train[:cfg.calibration_examples]
    log.info("scoring importance on %d blocks of %d tokens", len(blocks), cfg.data.max_length)
    loader = DataLoader(blocks, batch_size=8, collate_fn=collator(teacher.tokenizer, "clm"))
    pruned, kept = prune_model(teacher.model, importance_scores(teacher.model, loader), target)
    config, new = teacher.model.config, pruned.config
    before, after = (sum(p.numel() for p in m.parameters()) for m in (teacher.model, pruned))
    record = PruningRecord(kept, shape={
        "layers": f"{family.depth(config)} -> {family.depth(new)}",
        "heads_per_layer": f"{family.heads(config)} -> {family.heads(new)}",
        "kv_heads_per_layer": f"{family.kv_heads(config)} -> {family.kv_heads(new)}",
        "hidden": f"{family.width(config)} -> {family.width(new)}",
        "ffn_per_layer": f"{family.ffn(config)} -> {family.ffn(new)}", "params": f"{before:,} -> {after:,}"}, details={
        "params_ratio": round(after / before, 4), "calibration_blocks": len(blocks),
        "importance": "heads, FFN neurons, channels: sum over blocks of |sum over tokens of activation x gradient| of "
                      "the LM loss; layers: sum over tokens of 1 - cos(layer input, output)",
        "recovery": cfg.recovery})
    log.info("pruned: layers %s, heads %s (KV %s), hidden %s, ffn %s, params %s (%.0f%%)", *(record.shape[k] for k in (
        "layers", "heads_per_layer", "kv_heads_per_layer", "hidden", "ffn_per_layer", "params")),
        100 * record.details["params_ratio"])
    baseline = _baseline(cfg, pruned, teacher.tokenizer) if cfg.baseline else None
    if cfg.recovery == "none":
        record.details["corpus"] = source
        return _finish_unrecovered(cfg, run, request, pruned, teacher, pcfg, data, record, source, baseline)
    tokenizer = teacher.tokenizer
    del teacher  # distill-lm loads the unpruned model again: one copy in memory, not two
    gc.collect()
    return _recover(cfg, request, pruned, tokenizer, record, baseline)


def _saved(model, tokenizer, folder: Path) -> Path:
    """Write a model and the teacher's tokenizer to `folder` once (rank 0), replacing what was there."""
    if is_main_process():
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    wait_for_everyone()
    return folder


def _hidden_sibling(out: str, suffix: str) -> Path:
    out_path = Path(out).expanduser()
    return out_path.with_name(f".{out_path.name}.{suffix}")


def _baseline_out(cfg: PruneLMConfig) -> Path:
    return Path(f"{Path(cfg.out).expanduser()}-baseline")


def _baseline_config(cfg: PruneLMConfig) -> PretrainConfig:
    return PretrainConfig(model=str(_hidden_sibling(cfg.out, "random-init")), out=str(_baseline_out(cfg)),
                          objective="clm", data=cfg.data, train=cfg.train, overwrite=cfg.overwrite)


def _baseline_done(cfg: PruneLMConfig) -> bool:
    """A baseline the same command already completed is kept (unless --overwrite)."""
    return not cfg.overwrite and is_complete(_baseline_out(cfg))


def _baseline(cfg: PruneLMConfig, pruned, tokenizer) -> dict[str, Any]:
    """The pruned shape from random init, trained on the same blocks and steps without a teacher -> its scores."""
    out = _baseline_out(cfg)
    if _baseline_done(cfg):
        log.info("baseline: complete in %s, kept", out)
        metrics = json.loads((out / METRICS).read_text(encoding="utf-8")).get("metrics", {})
    else:
        torch.manual_seed(cfg.train.seed)
        init = _saved(type(pruned)(pruned.config), tokenizer, _hidden_sibling(cfg.out, "random-init"))
        log.info("baseline: the pruned shape from random init, trained alone on the same blocks -> %s", out)
        try:
            metrics = pretrain(_baseline_config(cfg)).get("metrics", {})  # resumes its own interrupted run
        finally:
            if is_main_process():
                shutil.rmtree(init, ignore_errors=True)
    return {"run": str(out), "metrics": metrics, "init": "random", "teacher": None}


def _recover(cfg: PruneLMConfig, request: dict[str, Any], pruned, tokenizer, record: PruningRecord,
             baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Distil the pruned model from the unpruned one (distill-lm, top-k cache), recorded as this prune-lm run."""
    init = _saved(pruned, tokenizer, _hidden_sibling(cfg.out, "pruned-init"))
    distill_cfg = LMDistillConfig(teacher=cfg.model, student=str(init), out=cfg.out, resume=cfg.resume or None,
                                  overwrite=cfg.overwrite, objective="clm", top_k=cfg.top_k,
                                  teacher_precision=cfg.teacher_precision, fsdp=cfg.fsdp, data=cfg.data,
                                  train=cfg.train, loss=cfg.loss)
    try:
        return distill_lm(distill_cfg, stage="prune-lm", pruning=record, records={"prune_config": request},
                          request=request, metrics_extra={"baseline": baseline} if baseline else None)
    finally:
        if is_main_process():
            shutil.rmtree(init, ignore_errors=True)


def _finish_unrecovered(cfg: PruneLMConfig, run: RunDir, request: dict[str, Any], pruned, teacher, pcfg, data,
                        record: PruningRecord, source: str, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """--recovery none: the pruned model as it is, scored on the fixed validation set."""
    run.begin(cfg.overwrite, False, request)
    tokenizer = teacher.tokenizer
    validation_collate = collator(tokenizer, "clm")
    teacher_scores = score_lm(teacher.model, data.validation, validation_collate, "clm", cfg.train.eval_batch_size)

    def write(folder: Path) -> dict[str, Any]:
        pruned.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        scores = score_lm(pruned, data.validation, validation_collate, "clm", cfg.train.eval_batch_size)
        return lm_metrics_payload(pcfg, pruned, tokenizer, data, folder, scores) | (
            {"baseline": baseline} if baseline else {})

    with run.guard():
        return finish_stage(run, write, lambda metrics: stage_manifest(
            "prune-lm", str(teacher.path), request, data={"source": source, "seed": cfg.data.split_seed,
                                                           **data.record},
            task=TaskRecord("clm", family=pruned.config.model_type), lm_config=to_dict(pcfg),
            teacher_metrics=teacher_scores, pruning=record, prune_config=request))
