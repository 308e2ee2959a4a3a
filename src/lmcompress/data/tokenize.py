"""Task frames -> tokenised `datasets.Dataset`s and padding collators."""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, PreTrainedTokenizerBase

from .ner import tokenize_words
from .qa import default_stride, tokenize_train_features

datasets.disable_progress_bars()


def tokenize_frame(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int,
                   qa_options=None) -> datasets.Dataset:
    """Frame with text, [text_pair], label -> Dataset with input_ids, attention_mask, [token_type_ids], labels
    (token-classification frames: labels per sub-token, see ner.tokenize_words; question-answering frames: one row
    per context window with start_positions / end_positions, see qa.tokenize_train_features)."""
    if "tokens" in frame.columns:
        return tokenize_words(frame, tokenizer, max_length)
    if "answer_starts" in frame.columns:
        stride = qa_options.doc_stride if qa_options else default_stride(max_length)
        return tokenize_train_features(frame, tokenizer, max_length, stride)
    has_pair = "text_pair" in frame.columns
    dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch["text_pair"] if has_pair else None
        encoded = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        encoded["labels"] = batch["label"]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


class _Collator:
    """Pads each batch to its own longest row (a multiple of 8 for friendlier kernels); per-token labels (token
    classification) are padded with IGNORE, sequence labels passed through."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.sequence = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8, return_tensors="pt")
        self.tokens = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        per_token = bool(features) and isinstance(features[0].get("labels"), (list, tuple))
        return (self.tokens if per_token else self.sequence)(features)


def collator(tokenizer: PreTrainedTokenizerBase) -> _Collator:
    return _Collator(tokenizer)


def fixed_batch(texts: list[str], pairs: list[str] | None, tokenizer: PreTrainedTokenizerBase, max_length: int,
                batch_size: int) -> dict[str, torch.Tensor]:
    """A batch padded to exactly max_length tokens, for latency measurements that compare models fairly."""
    reps = -(-batch_size // max(1, len(texts)))
    texts = (texts * reps)[:batch_size]
    pairs = (pairs * reps)[:batch_size] if pairs else None
    return dict(tokenizer(texts, pairs, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"))
