"""`lmcompress prune`: score the units of a fine-tuned model on training rows, remove the least important ones
(`surgery.prune`), then recover by distilling from the unpruned model, both in memory (the distill stage's
`distill_into_run`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..config import DistillConfig, PruneConfig, to_dict
from ..data import load_task
from ..data.tokenize import collator, tokenize_frame
from ..errors import LmcError
from ..models.families import check_max_length, require_family
from ..models.load import load_tokenizer, load_trained_classifier
from ..runkinds.task import finish_run
from ..runs.manifest import PruningRecord, data_config_for, stage_manifest
from ..runs.rundir import RunDir
from ..surgery.prune import importance_scores, plan, prune_model
from .distill import Provenance, Student, Teacher, distill_into_run

log = logging.getLogger("lmcompress")


def prune(cfg: PruneConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, to_dict(cfg))  # fail on a bad --out before minutes of scoring
    source = Path(cfg.model).expanduser()
    if not (source / "config.json").is_file():
        raise LmcError(f"--model {cfg.model} is not a fine-tuned run (no config.json); a language model (causal LM "
                       "on raw text) is pruned by `lmcompress prune-lm`")
    data_cfg = data_config_for(cfg.data, source)
    task_data = load_task(data_cfg)
    model = load_trained_classifier(source, task_data.labels, task_data.task == "regression", task_data.task)
    family = require_family(model.config, "prune", narrow=True)  # before any slow work
    check_max_length(model.config, data_cfg.max_length)
    target = plan(model.config, cfg.heads, cfg.ffn, cfg.layers, cfg.hidden)
    tokenizer = load_tokenizer(source)

    rows = task_data.splits["train"].head(cfg.calibration_examples)
    loader = DataLoader(tokenize_frame(rows, tokenizer, data_cfg.max_length, task_data.qa_options), batch_size=32,
                        collate_fn=collator(tokenizer))
    log.info("scoring importance on %d training rows", len(rows))
    scores = importance_scores(model, loader)
    pruned, kept = prune_model(model, scores, target)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    config = model.config
    record = PruningRecord(kept, shape={
        "heads_per_layer": f"{family.heads(config)} -> {target.heads}", "hidden": f"{family.width(config)} -> {target.hidden}",
        "ffn_per_layer": f"{family.ffn(config)} -> {target.ffn}", "params": f"{before:,} -> {after:,}"}, details={
        "head_size": target.head_size, "importance": "sum over examples of |sum over tokens of activation x gradient|",
        "calibration_examples": len(rows), "recovery": cfg.recovery,
        "layer_importance": [round(x, 6) for x in scores.layers.tolist()]})
    log.info("pruned: layers %s, heads %s, hidden %s, ffn %s, params %s", kept, *(record.shape[k] for k in (
        "heads_per_layer", "hidden", "ffn_per_layer", "params")))
    if target.hidden != model.config.hidden_size and cfg.hidden is None:
        log.info("BERT-family configs tie hidden = heads x head size, so the hidden width follows the kept heads "
                 "(pass --hidden to choose it)")

    if cfg.recovery == "none":
        run.begin(cfg.overwrite, False)
        with run.guard():
            return finish_run(run, pruned, tokenizer, task_data, data_cfg.max_length, 64, lambda: stage_manifest(
                "prune", str(source), to_dict(cfg) | {"data": to_dict(data_cfg)}, task_data, pruning=record))
    return _recover(cfg, run, Teacher(model, source, tokenizer), pruned, record, task_data, data_cfg)


def _recover(cfg: PruneConfig, run: RunDir, teacher: Teacher, pruned, record: PruningRecord, task_data,
             data_cfg) -> dict[str, Any]:
    """Distil the pruned model from the unpruned one, both in memory (`finetune` recovery = labels only)."""
    loss = type(cfg.loss)(alpha=1.0) if cfg.recovery == "finetune" else cfg.loss
    distill_cfg = DistillConfig(teacher=str(teacher.folder), student="pruned", out=cfg.out, resume=cfg.resume,
                                overwrite=cfg.overwrite, data=cfg.data, train=cfg.train, loss=loss)
    student = Student(pruned, teacher.tokenizer, record.kept_layers)  # whole layers kept: the hidden loss pairs them
    return distill_into_run(distill_cfg, run, teacher, student, task_data, data_cfg, Provenance(
        stage="prune", request=to_dict(cfg), pruning=record, records={"prune_config": to_dict(cfg)}))
