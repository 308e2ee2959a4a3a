"""`lmcompress distill-embeddings`: bi-encoder distillation for sentence-embedding models such as minilm-l6.

The student reads each sentence and learns the teacher's mean-pooled sentence embedding (MSE, through a learned
projection when it is narrower). Teacher embeddings of the training sentences are computed once, in inference
mode, and kept in memory, so every epoch costs only the student. No labels are needed: any raw text will do.
Held-aside pairs and scoring: the sentence-embedding run kind (`runkinds/embedding.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoModel

from ..config import EmbeddingDistillConfig, to_dict
from ..data.tokenize import collator
from ..errors import LmcError
from ..measure import count_params
from ..models import presets
from ..models.load import load_encoder, load_tokenizer, resolve
from ..runkinds.embedding import embed, pairs_fingerprint, score_encoder, score_pairs, sentence_data
from ..distributed import num_processes
from ..runs.manifest import EMBEDDING_TASK, TaskRecord, TrainingRecord, stage_manifest
from ..runs.rundir import RunDir, finish_stage, initial_scores
from ..training import fit
from ..distillation.components import DistillModule
from ..distillation.losses import embedding_mse
from ..models.outputs import mean_pool
from ..surgery.student import build_student, is_derived_spec, parse_spec

log = logging.getLogger("lmcompress")


def make_student(spec: str, teacher, teacher_tokenizer, seed: int):
    """-> (student encoder, its tokenizer, teacher layers copied or None)"""
    if is_derived_spec(spec):
        student, copied = build_student(teacher, parse_spec(spec))
        return student, teacher_tokenizer, copied
    preset = presets.parse_preset(spec)
    if preset is not None and not Path(spec).exists():
        transformers.set_seed(seed)
        config = presets.build_config(preset, len(teacher_tokenizer), teacher_tokenizer.pad_token_id,
                                      teacher_tokenizer.cls_token_id, teacher_tokenizer.sep_token_id)
        return AutoModel.from_config(config), teacher_tokenizer, None
    source = resolve(spec, role="student")
    return load_encoder(source.path), load_tokenizer(source.tokenizer_path), None


# ------------------------------------------------------------------------------------------------ stage


def distill_embeddings(cfg: EmbeddingDistillConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    teacher_source = resolve(cfg.teacher, role="teacher")
    if teacher_source.path is None:
        raise LmcError("--teacher must be a trained sentence-embedding encoder (zoo name or folder), not a preset")
    teacher = load_encoder(teacher_source.path).eval()
    teacher_tokenizer = load_tokenizer(teacher_source.tokenizer_path)
    student, tokenizer, copied = make_student(cfg.student, teacher, teacher_tokenizer, cfg.train.seed)

    sentences = sentence_data(cfg)
    train_sentences, pairs, corpus_source = sentences.train, sentences.pairs, sentences.source
    if not train_sentences:
        raise LmcError(f"no training sentences of {cfg.min_sentence_chars}+ characters in {cfg.data.data}")
    max_len = cfg.data.max_length
    log.info("%d training sentences, %d held-aside pairs from %d validation documents", len(train_sentences),
             len(pairs), sentences.validation_documents)

    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        transformers.set_seed(cfg.train.seed)
        log.info("teacher embeddings of the training sentences (once, kept in memory)")
        targets = embed(teacher, teacher_tokenizer, train_sentences, max_len)  # [N, Ht]
        teacher_scores, teacher_cosine = score_pairs(teacher, teacher_tokenizer, pairs, max_len)
        log.info("teacher: held-aside pairs spearman %.4f", teacher_scores["spearman"])
        train_set = datasets.Dataset.from_dict({"text": train_sentences}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=max_len), batched=True, remove_columns=["text"])
        train_set = train_set.add_column("idx", list(range(len(train_set))))
        module = DistillModule(student, student.config.hidden_size, teacher.config.hidden_size, 1)

        def loss_fn(m: DistillModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            batch = dict(batch)
            idx = batch.pop("idx")
            hidden = m.student(**batch).last_hidden_state  # [B, T, Hs]
            pooled = mean_pool(hidden, batch["attention_mask"])  # [B, Hs]
            return embedding_mse(pooled, targets[idx.cpu()].to(pooled.device), m.project(0))

        def evaluate_fn(m: DistillModule) -> dict[str, float]:
            return score_pairs(m.student, tokenizer, pairs, max_len, teacher_cosine)[0]

        initial = initial_scores(run.partial, cfg.resume, lambda: evaluate_fn(module))
        result = fit(module, train_set, collator(tokenizer), cfg.train, loss_fn=loss_fn, evaluate_fn=evaluate_fn,
                     monitor="spearman", higher_is_better=True, run_folder=run.partial, resume=cfg.resume,
                     description=f"distill-embeddings {Path(cfg.out).name}")
        student = module.student.cpu()
        scores = result.kept_scores("spearman", True, cfg.train.keep_best)

        def save_and_score(folder: Path) -> dict[str, Any]:
            student.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            # params, size and latency of the saved checkpoint; the scores are those measured in training (with the
            # teacher agreement, which needs the teacher's cosines)
            return score_encoder(folder, pairs, max_len, 10, scores=scores) | {
                "metrics_before": initial, "teacher_metrics": teacher_scores, "teacher_params": count_params(teacher),
                "retention": round(scores["spearman"] / teacher_scores["spearman"], 4)
                if teacher_scores["spearman"] else None}

        return finish_stage(run, save_and_score, lambda metrics: stage_manifest(
            "distill-embeddings", str(teacher_source.path), to_dict(cfg),
            data={"source": corpus_source, "seed": cfg.data.split_seed, "train_sentences": len(train_sentences),
                  "pairs": len(pairs), "validation_documents": sentences.validation_documents,
                  "pairs_fingerprint": pairs_fingerprint(pairs)},
            task=TaskRecord(EMBEDDING_TASK), train=TrainingRecord.of(result), processes=num_processes(),
            student={"spec": cfg.student, "teacher_layers_copied": copied, "hidden": student.config.hidden_size}),
            wall_time_s=round(result.wall_time_s, 1))
