"""Task frames -> tokenised `datasets.Dataset`s and padding collators."""

from __future__ import annotations

from collections.abc import Callable

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


SPECIAL_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")


def _piece_names(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int]], list[str]]:
    """ids -> token strings, each special token named by its role, so BERT's [CLS] and MPNet's <s> compare equal."""
    roles = {getattr(tokenizer, f"{role}_id"): role for role in reversed(SPECIAL_ROLES)  # the first role wins
             if getattr(tokenizer, f"{role}_id", None) is not None}

    def names(ids: list[int]) -> list[str]:
        return [roles.get(i) or piece for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids))]
    return names


def first_misaligned_row(student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase,
                         student_rows: list[list[int]], teacher_rows: list[list[int]]) -> int | None:
    """Two vocabularies with other ids can still cut every text into the same pieces (MPNet's tokenizer is BERT's
    uncased WordPiece with other special tokens): then the two models' positions line up one to one and the
    position-by-position losses (hidden states, attention maps) apply across them, once both pad on the same side.
    -> the index of the first row the two tokenizers cut differently, None when every row lines up."""
    student_names, teacher_names = _piece_names(student_tokenizer), _piece_names(teacher_tokenizer)
    for i, (student_ids, teacher_ids) in enumerate(zip(student_rows, teacher_rows, strict=True)):
        if len(student_ids) != len(teacher_ids) or student_names(student_ids) != teacher_names(teacher_ids):
            return i
    return None
