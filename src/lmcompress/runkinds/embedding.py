"""The sentence-embedding run kind (distill-embeddings runs, and plain encoders compared with them).

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

import numpy as np
import torch
from scipy.stats import spearmanr

from ..config import CompareConfig, EmbeddingDistillConfig, EvaluateConfig, from_dict
from ..data.corpora import Document, load_corpus
from ..errors import LmcError
from ..measure import count_params, latency_for_texts, weights_size_bytes
from ..models.outputs import mean_pool
from ..models.load import load_encoder, load_tokenizer
from ..data.pretraining import split_documents
from ..runs.manifest import EMBEDDING_TASK, Manifest, read_manifest

log = logging.getLogger("lmcompress")


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
    manifest = read_manifest(folder)
    cfg = from_dict(EmbeddingDistillConfig, manifest.config, where=f"{folder}/lmcompress.json config")
    pairs = sentence_data(cfg).pairs
    expected = (manifest.data or {}).get("pairs_fingerprint")
    if expected and expected != pairs_fingerprint(pairs):
        log.warning("the held-aside pairs differ from those recorded at training time (corpus changed?)")
    return cfg, pairs


def score_encoder(folder: Path, pairs: list[tuple[str, str, float]], max_length: int, latency_repeats: int | None,
                  threads: int | None = None, scores: dict[str, float] | None = None) -> dict[str, Any]:
    """Any encoder folder (an embedding run or a plain checkpoint such as minilm-l6) on the pairs -> the metrics.json
    payload: spearman of its cosines (or `scores`, when the caller measured them already), params, size and latency
    (sentences padded to max_length)."""
    model, tokenizer = load_encoder(folder).eval(), load_tokenizer(folder)
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
        out[torch.from_numpy(rows)] = mean_pool(hidden, batch["attention_mask"]).float().cpu()
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


def evaluate(folder: Path, manifest: Manifest, cfg: EvaluateConfig) -> dict[str, Any]:
    """The cosine-similarity correlation on the run's held-aside sentence pairs -> the metrics.json payload."""
    recorded, pairs = held_aside_pairs(folder)
    return score_encoder(folder, pairs, recorded.data.max_length, cfg.latency_repeats if cfg.latency else None,
                         cfg.threads)


def compare_rows(cfg: CompareConfig, folders: list[Path], names: list[str], manifests: list[Manifest],
                 teacher_index: int, threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sentence encoders (embedding runs, and plain encoders such as their teacher) on the held-aside pairs of the
    first embedding run: spearman of cosine similarity."""
    for name, manifest in zip(names, manifests):
        kind = manifest.task_type
        if kind and not manifest.is_embedding_run:
            raise LmcError(f"{name} is a {kind} run; compare sentence-embedding runs with each other and with plain "
                           "encoders (their teacher)")
    reference = next(f for f, m in zip(folders, manifests) if m.is_embedding_run)
    recorded, pairs = held_aside_pairs(reference)
    max_length = recorded.data.max_length
    rows = []
    for name, folder, manifest in zip(names, folders, manifests):
        scored = score_encoder(folder, pairs, max_length, cfg.latency_repeats, threads)
        rows.append({"name": name, "path": str(folder), "made_by": manifest.made_by(), "params": scored["params"],
                     "size_mb": round(scored["size_bytes"] / 1e6, 2), "metric": "spearman",
                     "value": round(scored["metrics"]["spearman"], 6), "metrics": scored["metrics"],
                     "latency_ms_b1": scored["latency_ms"]["batch1"], "latency_ms_b32": scored["latency_ms"]["batch32"]})
        log.info("%s: spearman %.4f, %.1f ms @ b32", name, scored["metrics"]["spearman"], scored["latency_ms"]["batch32"])
    data = {"source": recorded.data.data, "seed": recorded.data.split_seed, "pairs": len(pairs),
            "pairs_from": str(reference)}
    return rows, {"task": "sentence-embedding", "data": data, "seq_len": max_length, "lower_is_better": False}
