"""`lmcompress distill-embeddings`: bi-encoder distillation for sentence-embedding models such as minilm-l6.

The student reads each sentence and learns the teacher's mean-pooled sentence embedding (MSE, through a learned
projection when it is narrower). Teacher embeddings of the training sentences are computed once, in inference
mode, and kept in memory, so every epoch costs only the student. No labels are needed: any raw text will do.

Scoring needs sentence pairs with a similarity score, and none ship offline here, so the held-aside pairs are built
from real text: the validation documents (a seeded document-level split of the corpus) give positive pairs (two
sentences of the same document, score 1) and negative pairs (sentences of two different documents, score 0), half
each. A model's `spearman` is the rank correlation of its cosine similarities with those scores (topical
relatedness; the teacher's own value is the reference), and `teacher_agreement` the rank correlation of the
student's cosines with the teacher's on the same pairs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from scipy.stats import spearmanr
from transformers import AutoModel

from ..config import EmbeddingDistillConfig, from_dict, to_dict
from ..data.corpora import Document, load_corpus
from ..data.tokenize import collator
from ..errors import LmcError
from ..evaluate import count_params, latency_for_texts, weights_size_bytes
from ..models import presets
from ..models.load import _first_line, load_tokenizer, remote_code_allowed, resolve
from ..runs import (EMBEDDING_TASK, METRICS, RunDir, is_main_process, num_processes, read_run_manifest, stage_manifest,
                   training_record, write_json_atomic)
from ..train import fit
from . import losses
from .stage import DistillModule
from .student import build_student, is_derived_spec, parse_spec

log = logging.getLogger("lmcompress")


# ------------------------------------------------------------------------------------------------ data


def similarity_pairs(documents: list[list[str]], n_pairs: int, seed: int) -> list[tuple[str, str, float]]:
    """Held-aside pairs from real text: (two sentences of one document, 1.0) and (sentences of two documents, 0.0),
    alternating, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    documents = [d for d in documents if d]
    multi = [d for d in documents if len(d) >= 2]
    if not multi or len(documents) < 2:
        raise LmcError("similarity pairs need held-out documents with 2+ sentences and at least 2 documents; raise "
                       "--validation-fraction or use a corpus of longer documents (enwiki-sample)")
    pairs = []
    for i in range(n_pairs):
        if i % 2 == 0:
            document = multi[rng.integers(len(multi))]
            a, b = rng.choice(len(document), 2, replace=False)
            pairs.append((document[a], document[b], 1.0))
        else:
            first, second = rng.choice(len(documents), 2, replace=False)
            pairs.append((documents[first][rng.integers(len(documents[first]))],
                          documents[second][rng.integers(len(documents[second]))], 0.0))
    return pairs


def _sentences(documents: list[Document], min_chars: int) -> list[list[str]]:
    return [[s for s in d if len(s) >= min_chars] for d in documents]


@dataclass
class SentenceData:
    train: list[str]  # training sentences (the train documents')
    pairs: list[tuple[str, str, float]]  # held-aside scored pairs (the validation documents')
    source: str
    validation_documents: int


def sentence_data(cfg: EmbeddingDistillConfig) -> SentenceData:
    """The corpus split by document with the recorded seed -> training sentences and the held-aside pairs; the same
    config always gives the same pairs, so evaluate and compare can rebuild them from a run's lmcompress.json."""
    from ..pretrain import split_documents

    documents, source = load_corpus(cfg.data.data, cfg.data.text_column)
    if cfg.data.max_documents:
        documents = documents[:cfg.data.max_documents]
    train_ids, validation_ids = split_documents(documents, cfg.data.validation_fraction, cfg.data.split_seed)
    train = [s for d in _sentences([documents[i] for i in train_ids], cfg.min_sentence_chars) for s in d]
    pairs = similarity_pairs(_sentences([documents[i] for i in validation_ids], cfg.min_sentence_chars),
                             cfg.data.max_validation_examples, cfg.data.split_seed + 3)
    return SentenceData(train, pairs, source, len(validation_ids))


def pairs_fingerprint(pairs: list[tuple[str, str, float]]) -> str:
    return hashlib.sha256(repr(pairs).encode("utf-8")).hexdigest()[:16]


def held_aside_pairs(folder: Path) -> tuple[EmbeddingDistillConfig, list[tuple[str, str, float]]]:
    """An embedding run's config (its lmcompress.json) and its held-aside pairs, rebuilt from that config and checked
    against the fingerprint recorded with it."""
    manifest = read_run_manifest(folder) or {}
    cfg = from_dict(EmbeddingDistillConfig, manifest.get("config") or {}, where=f"{folder}/lmcompress.json config")
    pairs = sentence_data(cfg).pairs
    expected = (manifest.get("data") or {}).get("pairs_fingerprint")
    if expected and expected != pairs_fingerprint(pairs):
        log.warning("the held-aside pairs differ from those recorded at training time (corpus changed?)")
    return cfg, pairs


def score_encoder(folder: Path, pairs: list[tuple[str, str, float]], max_length: int, latency_repeats: int | None,
                  threads: int | None = None, scores: dict[str, float] | None = None) -> dict[str, Any]:
    """Any encoder folder (an embedding run or a plain checkpoint such as minilm-l6) on the pairs -> the metrics.json
    payload: spearman of its cosines (or `scores`, when the caller measured them already), params, size and latency
    (sentences padded to max_length)."""
    model, tokenizer = _encoder(folder).eval(), load_tokenizer(folder)
    if scores is None:
        scores, _ = score_pairs(model, tokenizer, pairs, max_length)
    payload: dict[str, Any] = {"task": EMBEDDING_TASK, "split": "validation", "metrics": scores,
                               "main_metric": "spearman", "params": count_params(model),
                               "size_bytes": weights_size_bytes(folder), "examples": len(pairs)}
    if latency_repeats:
        payload |= latency_for_texts(model, tokenizer, [p[0] for p in pairs], None, max_length, latency_repeats,
                                     threads)
    return payload


@torch.inference_mode()
def embed(model: torch.nn.Module, tokenizer, sentences: list[str], max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled sentence embeddings [N, H] (batches sorted by length: little padding), in input order."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(s) for s in sentences])
    out = torch.empty(len(sentences), model.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([sentences[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        out[torch.from_numpy(rows)] = losses.mean_pool(hidden, batch["attention_mask"]).float().cpu()
    return out


def score_pairs(model, tokenizer, pairs: list[tuple[str, str, float]], max_length: int,
                reference: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """-> ({spearman[, teacher_agreement]}, cosine per pair)"""
    a = embed(model, tokenizer, [p[0] for p in pairs], max_length)
    b = embed(model, tokenizer, [p[1] for p in pairs], max_length)
    cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
    scores = {"spearman": float(spearmanr(cosine, [p[2] for p in pairs])[0])}
    if reference is not None:
        scores["teacher_agreement"] = float(spearmanr(cosine, reference)[0])
    return scores, cosine


# ------------------------------------------------------------------------------------------------ models


def _encoder(folder: Path) -> transformers.PreTrainedModel:
    try:
        return AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=remote_code_allowed())
    except Exception as exc:
        raise LmcError(f"cannot load an encoder from {folder}: {_first_line(exc)}") from None


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
    return _encoder(source.path), load_tokenizer(source.tokenizer_path), None


# ------------------------------------------------------------------------------------------------ stage


def distill_embeddings(cfg: EmbeddingDistillConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    teacher_source = resolve(cfg.teacher, role="teacher")
    if teacher_source.path is None:
        raise LmcError("--teacher must be a trained sentence-embedding encoder (zoo name or folder), not a preset")
    teacher = _encoder(teacher_source.path).eval()
    teacher_tokenizer = load_tokenizer(teacher_source.tokenizer_path)
    student, tokenizer, copied = make_student(cfg.student, teacher, teacher_tokenizer, cfg.train.seed)

    from ..pretrain import initial_scores

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
            pooled = losses.mean_pool(hidden, batch["attention_mask"])  # [B, Hs]
            return losses.embedding_mse(pooled, targets[idx.cpu()].to(pooled.device), m.project(0))

        def evaluate_fn(m: DistillModule) -> dict[str, float]:
            return score_pairs(m.student, tokenizer, pairs, max_len, teacher_cosine)[0]

        initial = initial_scores(run.partial, cfg.resume, lambda: evaluate_fn(module))
        result = fit(module, train_set, collator(tokenizer), cfg.train, loss_fn=loss_fn, evaluate_fn=evaluate_fn,
                     monitor="spearman", higher_is_better=True, run_folder=run.partial, resume=cfg.resume,
                     description=f"distill-embeddings {Path(cfg.out).name}")
        student = module.student.cpu()
        metrics: dict[str, Any] = {}
        record: dict[str, Any] = {}
        if is_main_process():
            student.save_pretrained(run.partial)
            tokenizer.save_pretrained(run.partial)
            scores = result.kept_scores("spearman", True, cfg.train.keep_best)
            # params, size and latency of the saved checkpoint; the scores are those measured in training (with the
            # teacher agreement, which needs the teacher's cosines)
            metrics = score_encoder(run.partial, pairs, max_len, 10, scores=scores) | {
                "metrics_before": initial, "teacher_metrics": teacher_scores,
                "teacher_params": count_params(teacher),
                "retention": round(scores["spearman"] / teacher_scores["spearman"], 4)
                if teacher_scores["spearman"] else None}
            write_json_atomic(run.partial / METRICS, metrics)
            record = stage_manifest(
                "distill-embeddings", str(teacher_source.path), to_dict(cfg),
                data={"source": corpus_source, "seed": cfg.data.split_seed, "train_sentences": len(train_sentences),
                      "pairs": len(pairs), "validation_documents": sentences.validation_documents,
                      "pairs_fingerprint": pairs_fingerprint(pairs)},
                task={"type": EMBEDDING_TASK}, train=training_record(result), processes=num_processes(),
                student={"spec": cfg.student, "teacher_layers_copied": copied,
                         "hidden": student.config.hidden_size})
        final = run.commit(record)
    return metrics | {"path": str(final), "wall_time_s": round(result.wall_time_s, 1)} if metrics else {}
