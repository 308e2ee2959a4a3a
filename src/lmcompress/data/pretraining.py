"""Pre-training data: the corpus split into train and held-out documents, tokenised (cached), cut into examples for
the objective (CLM blocks, MLM blocks, NSP/SOP sentence pairs) and masked; the fixed validation set.

The validation set is fixed: built from the held-out documents and masked once with a seed derived from the split
seed only, so perplexity before and after training, and across runs with the same tokenizer, is measured on the
very same masked tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PretrainConfig
from ..errors import LmcError
from . import lm
from .corpora import Document, has_cjk, load_corpus

PAIR_METRIC = {"mlm+nsp": "nsp_accuracy", "mlm+sop": "sop_accuracy"}


@dataclass
class LMData:
    train: list[dict[str, np.ndarray]]
    validation: list[dict[str, np.ndarray]]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_train_tokens(self) -> float:
        return self.record["tokens"]["train"] / len(self.train)


def split_documents(documents: list[Document], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded document-level split -> (train indices, validation indices), both in corpus order."""
    if len(documents) < 2:
        raise LmcError("the corpus has a single document; pre-training needs at least 2 (one is held out)")
    order = np.random.default_rng(seed).permutation(len(documents))
    n_validation = min(len(documents) - 1, max(1, math.ceil(len(documents) * fraction)))
    return sorted(order[n_validation:].tolist()), sorted(order[:n_validation].tolist())


def use_chinese_words(cfg: PretrainConfig, documents: list[Document]) -> bool:
    """jieba word boundaries: asked for, or (auto) when most of a sample of the text is Chinese."""
    if cfg.objective == "clm" or cfg.chinese_words == "off" or not cfg.whole_word:
        return False
    if cfg.chinese_words == "jieba":
        return True
    sample = "".join(s for d in documents[:200] for s in d)[:20000]
    return bool(sample) and sum(has_cjk(c) for c in sample) / len(sample) > 0.3


def masking_options(cfg: PretrainConfig) -> dict[str, Any]:
    return {"mask_prob": cfg.mask_prob, "whole_word": cfg.whole_word, "max_ngram": cfg.max_ngram}


def build_examples(cfg: PretrainConfig, documents: list[list[lm.Segment]], special: lm.SpecialIds,
                   rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    length = cfg.data.max_length
    if cfg.objective == "clm":
        return lm.clm_blocks(documents, length, special)
    if cfg.objective == "mlm":
        return lm.mlm_blocks(documents, length, special)
    return lm.sentence_pairs(documents, length, special, cfg.objective.split("+")[1], rng, cfg.short_seq_prob)


def examples_fingerprint(examples: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.get("masked_ids", example["input_ids"]).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def prepare_data(cfg: PretrainConfig, tokenizer, documents: list[Document], train_ids: list[int],
                 validation_ids: list[int], cache_root: Path) -> LMData:
    """Tokenise (cached) and build the training examples and the fixed, masked validation set."""
    chinese = use_chinese_words(cfg, documents)
    tokenized = lm.tokenize_documents(documents, tokenizer, chinese, cache_root, cfg.data.num_proc)
    segments = lm.as_segments(tokenized)
    special = lm.SpecialIds.of(tokenizer)
    train_docs = [segments[i] for i in train_ids if segments[i]]
    validation_docs = [segments[i] for i in validation_ids if segments[i]]
    if not train_docs or not validation_docs:
        raise LmcError("after tokenisation the train or validation documents are empty; add text to the corpus")
    train = build_examples(cfg, train_docs, special, np.random.default_rng(cfg.train.seed))
    validation = build_examples(cfg, validation_docs, special, np.random.default_rng(cfg.data.split_seed + 1))
    validation = validation[:cfg.data.max_validation_examples]
    if not train:
        raise LmcError("the corpus yields no training examples (too short for --max-length, or SOP documents with a "
                       "single sentence each)")
    if not validation:
        raise LmcError("the held-out documents yield no validation examples; raise --validation-fraction")
    if cfg.objective != "clm":
        if cfg.masking == "static":
            lm.mask_statically(train, np.random.default_rng(cfg.train.seed + 1), special, len(tokenizer),
                               **masking_options(cfg))
        lm.mask_statically(validation, np.random.default_rng(cfg.data.split_seed + 2), special, len(tokenizer),
                           **masking_options(cfg))
    record = {
        "documents": {"train": len(train_docs), "validation": len(validation_docs)},
        "examples": {"train": len(train), "validation": len(validation)},
        "tokens": {"train": int(sum(len(e["input_ids"]) for e in train)),
                   "validation": int(sum(len(e["input_ids"]) for e in validation))},
        "chinese_word_segmentation": "jieba" if chinese else None,
        "validation_fingerprint": examples_fingerprint(validation),
    }
    if cfg.objective in PAIR_METRIC:
        record["pair_label_share"] = round(float(np.mean([int(e["pair_label"]) for e in train])), 4)
    return LMData(train, validation, record)


def collator(tokenizer, objective: str) -> lm.PretrainCollator:
    return lm.PretrainCollator(objective, lm.SpecialIds.of(tokenizer))


def training_set(cfg: PretrainConfig, tokenizer, data: LMData) -> torch.utils.data.Dataset | list:
    """The training examples; with dynamic masking, wrapped so that each epoch draws fresh masks."""
    if cfg.objective == "clm" or cfg.masking == "static":
        return data.train
    return lm.DynamicMasking(data.train, cfg.train.seed, lm.SpecialIds.of(tokenizer), len(tokenizer),
                             **masking_options(cfg))


def cache_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.cache_dir or Path.home() / ".cache" / "lmcompress").expanduser()


def corpus(cfg: PretrainConfig) -> tuple[list[Document], str, list[int], list[int]]:
    documents, source = load_corpus(cfg.data.data, cfg.data.text_column)
    if cfg.data.max_documents:
        documents = documents[:cfg.data.max_documents]
    train_ids, validation_ids = split_documents(documents, cfg.data.validation_fraction, cfg.data.split_seed)
    return documents, source, train_ids, validation_ids
