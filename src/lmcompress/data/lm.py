"""Documents -> token ids (tokenised once, cached on disk) -> pre-training examples and their collator.

Token ids are int32 everywhere (Arrow features, numpy arrays): wide enough for any vocabulary, where uint16
would silently corrupt ids above 65,535. Each token also carries a `word_starts` flag (1 = first token of a word)
that whole-word masking groups by: from the tokenizer's own word boundaries, or for Chinese text from jieba's word
segmentation laid over a character vocabulary.

Example builders (all return lists of dicts of int numpy arrays):
- `mlm_blocks`: documents packed into [CLS] ... [SEP] blocks of max_length (documents separated by [SEP]);
- `clm_blocks`: documents packed into max_length blocks separated by the end-of-text token; a short last block is
  padded and its padding masked out by position (not by token id: GPT-2 pads with its end-of-text token);
- `sentence_pairs`: BERT's create_instances_from_document for NSP (B is the true continuation or, half the time,
  text from another document) and SOP (the two consecutive parts in order or swapped; a chunk with a single
  segment yields no SOP pair, and SOP never takes text from another document).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import LmcError
from .corpora import Document, corpus_fingerprint, has_cjk
from .masking import IGNORE, mask_example

log = logging.getLogger("lmcompress")

ID_DTYPE = np.int32
TOKENIZED_FORMAT = 1  # bump when the cached columns change
Segment = tuple[np.ndarray, np.ndarray]  # (ids [n] int32, word_starts [n] int8)

# ------------------------------------------------------------------------------------------------ tokenisation


def _word_starts(encoding, text: str, jieba_starts: set[int] | None) -> list[int]:
    """1 where a token begins a word: the tokenizer's word boundaries, or jieba's for Chinese text."""
    if jieba_starts is not None:
        return [1 if start in jieba_starts else 0 for start, _ in encoding.offsets]
    starts, previous = [], None
    for word in encoding.word_ids:
        starts.append(1 if word is None or word != previous else 0)
        previous = word
    return starts


def _encode_batch(batch: dict[str, list], tokenizer, chinese_words: bool) -> dict[str, list]:
    if chinese_words:
        import jieba  # loads its dictionary on import (seconds): only for Chinese text

        jieba.setLogLevel(logging.WARNING)
    ids_out, starts_out = [], []
    for segments in batch["segments"]:
        encodings = tokenizer(segments, add_special_tokens=False, return_offsets_mapping=chinese_words)
        doc_ids, doc_starts = [], []
        for i, text in enumerate(segments):
            jieba_starts = None
            if chinese_words and has_cjk(text):
                jieba_starts = {start for _, start, _ in jieba.tokenize(text)}
            doc_ids.append(encodings["input_ids"][i])
            doc_starts.append(_word_starts(encodings[i], text, jieba_starts))
        ids_out.append(doc_ids)
        starts_out.append(doc_starts)
    return {"input_ids": ids_out, "word_starts": starts_out}


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LmcError("pre-training needs a fast (Rust) tokenizer with offsets; this tokenizer has none")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()[:16]


def tokenize_documents(documents: list[Document], tokenizer, chinese_words: bool, cache_root: Path | None,
                       num_proc: int | None = None) -> datasets.Dataset:
    """Documents -> Dataset with per-document `input_ids` and `word_starts` (lists of segments), tokenised once:
    the result is saved under cache_root keyed by corpus + tokenizer + word mode, and loaded from there next time."""
    if len(tokenizer) > np.iinfo(ID_DTYPE).max:
        raise LmcError(f"vocabulary of {len(tokenizer)} tokens does not fit int32 ids")
    key = hashlib.sha256(
        f"{TOKENIZED_FORMAT}:{corpus_fingerprint(documents)}:{_tokenizer_hash(tokenizer)}:{chinese_words}".encode()
    ).hexdigest()[:20]
    folder = cache_root / "tokenized" / key if cache_root is not None else None
    if folder is not None and (folder / "dataset_info.json").is_file():
        log.info("tokenised corpus: cache hit (%s)", folder)
        return datasets.load_from_disk(str(folder))
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                                  "word_starts": datasets.Sequence(datasets.Sequence(datasets.Value("int8")))})
    if num_proc is None:
        num_proc = min(8, os.cpu_count() or 1) if len(documents) >= 2000 else 1
    log.info("tokenising %d documents (%d processes)%s", len(documents), num_proc,
             " with jieba word boundaries" if chinese_words else "")
    raw = datasets.Dataset.from_dict({"segments": documents})
    tokenized = raw.map(_encode_batch, batched=True, batch_size=64, num_proc=num_proc if num_proc > 1 else None,
                        remove_columns=["segments"], features=features,
                        fn_kwargs={"tokenizer": tokenizer, "chinese_words": chinese_words})
    if folder is not None:
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        try:
            tokenized.save_to_disk(str(tmp))
            os.replace(tmp, folder)
        except OSError as exc:  # a cache is an optimisation: a full or read-only disk only costs the reuse
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("could not cache the tokenised corpus in %s (%s)", folder, exc.strerror or exc)
        log.info("tokenised corpus: cache miss, saved to %s", folder)
    return tokenized


def as_segments(tokenized: datasets.Dataset) -> list[list[Segment]]:
    """Dataset rows -> per document (same order, an empty list where nothing was left), its non-empty segments as
    int32 / int8 numpy arrays."""
    return [[(np.asarray(ids, dtype=ID_DTYPE), np.asarray(starts, dtype=np.int8))
             for ids, starts in zip(row["input_ids"], row["word_starts"]) if len(ids)] for row in tokenized]


# ------------------------------------------------------------------------------------------------ examples


@dataclass(frozen=True)
class SpecialIds:
    cls: int | None
    sep: int | None
    eos: int | None
    pad: int
    mask: int | None

    @classmethod
    def of(cls, tokenizer) -> SpecialIds:
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   tokenizer.mask_token_id)


def _stream(documents: list[list[Segment]], separator: int) -> tuple[np.ndarray, np.ndarray]:
    """All documents as one token stream with `separator` after each -> (ids [N], word_starts [N])."""
    ids, starts = [], []
    sep_ids, sep_starts = np.array([separator], ID_DTYPE), np.ones(1, np.int8)
    for document in documents:
        for seg_ids, seg_starts in document:
            ids.append(seg_ids)
            starts.append(seg_starts)
        ids.append(sep_ids)
        starts.append(sep_starts)
    if not ids:
        return np.zeros(0, ID_DTYPE), np.zeros(0, np.int8)
    return np.concatenate(ids), np.concatenate(starts)


def _example(ids: np.ndarray, starts: np.ndarray, special: np.ndarray, **extra: Any) -> dict[str, np.ndarray]:
    return {"input_ids": ids.astype(ID_DTYPE), "word_starts": starts.astype(np.int8), "special": special, **extra}


def mlm_blocks(documents: list[list[Segment]], max_length: int, special_ids: SpecialIds) -> list[dict[str, np.ndarray]]:
    """Packed [CLS] t1..tn [SEP] blocks of max_length (documents joined by [SEP]); the last one may be shorter."""
    stream, starts = _stream(documents, special_ids.sep)
    body = max_length - 2
    examples = []
    for begin in range(0, len(stream), body):
        chunk, chunk_starts = stream[begin:begin + body], starts[begin:begin + body].copy()
        if len(chunk) < 8 and examples:  # a tail too short to learn from
            break
        chunk_starts[0] = 1  # a block may begin mid-word
        ids = np.concatenate([[special_ids.cls], chunk, [special_ids.sep]])
        special = np.concatenate([[True], chunk == special_ids.sep, [True]])
        examples.append(_example(ids, np.concatenate([[1], chunk_starts, [1]]), special))
    return examples


def clm_blocks(documents: list[list[Segment]], max_length: int, special_ids: SpecialIds) -> list[dict[str, np.ndarray]]:
    """Packed blocks of max_length tokens, documents separated by the end-of-text token ([SEP] for a WordPiece
    tokenizer, which has none: a GPT-2 preset given the default BERT vocabulary)."""
    separator = special_ids.eos if special_ids.eos is not None else special_ids.sep
    if separator is None:
        raise LmcError("the tokenizer has neither an end-of-text nor a [SEP] token to separate documents for causal "
                       "LM; pass --train-tokenizer N or a --tokenizer that has one")
    stream, starts = _stream(documents, separator)
    examples = []
    for begin in range(0, len(stream), max_length):
        chunk = stream[begin:begin + max_length]
        if len(chunk) < 8 and examples:
            break
        examples.append(_example(chunk, starts[begin:begin + max_length], np.zeros(len(chunk), bool)))
    return examples


def _truncate_pair(a: list[Segment], b: list[Segment], max_tokens: int, rng: np.random.Generator) -> tuple[Segment, Segment]:
    """Concatenate each side, then trim the longer one a token at a time from a random end (BERT)."""
    a_ids, a_starts = np.concatenate([s[0] for s in a]), np.concatenate([s[1] for s in a])
    b_ids, b_starts = np.concatenate([s[0] for s in b]), np.concatenate([s[1] for s in b])
    sides = [[a_ids, a_starts], [b_ids, b_starts]]
    while len(sides[0][0]) + len(sides[1][0]) > max_tokens:
        side = sides[0] if len(sides[0][0]) > len(sides[1][0]) else sides[1]
        if rng.random() < 0.5:
            side[0], side[1] = side[0][1:], side[1][1:]
        else:
            side[0], side[1] = side[0][:-1], side[1][:-1]
    for side in sides:
        side[1] = side[1].copy()
        side[1][0] = 1  # trimming the front may cut a word: its remainder starts a unit of its own
    return (sides[0][0], sides[0][1]), (sides[1][0], sides[1][1])


def _split_segment(segment: Segment) -> tuple[list[Segment], list[Segment]]:
    """One segment -> ([first part], [second part]) cut at the word start nearest its middle, or ([it], [])."""
    ids, starts = segment
    cuts = np.flatnonzero(starts[1:]) + 1
    if cuts.size == 0:
        return [segment], []
    cut = int(cuts[np.argmin(np.abs(cuts - len(ids) / 2))])
    return [(ids[:cut], starts[:cut])], [(ids[cut:], starts[cut:])]


def sentence_pairs(documents: list[list[Segment]], max_length: int, special_ids: SpecialIds, objective: str,
                   rng: np.random.Generator, short_seq_prob: float = 0.1) -> list[dict[str, np.ndarray]]:
    """[CLS] A [SEP] B [SEP] examples with `pair_label`.
    nsp: 0 = B continues A, 1 = B is from another document (BertForPreTraining's next_sentence_label).
    sop: 0 = A then B in their original order, 1 = swapped (AlbertForPreTraining's sentence_order_label)."""
    if objective not in ("nsp", "sop"):
        raise ValueError(f"objective must be nsp or sop, got {objective}")
    if objective == "nsp" and len(documents) < 2:
        raise LmcError("NSP needs at least 2 documents (random next segments come from another document)")
    max_tokens = max_length - 3
    examples = []
    for index, document in enumerate(documents):
        target = max_tokens if rng.random() >= short_seq_prob else int(rng.integers(2, max_tokens + 1))
        chunk: list[Segment] = []
        length, j = 0, 0
        while j < len(document):
            chunk.append(document[j])
            length += len(document[j][0])
            if j == len(document) - 1 or length >= target:
                a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
                a, b = chunk[:a_end], chunk[a_end:]
                label = 0
                random_next = objective == "nsp" and rng.random() < 0.5
                if objective == "nsp" and not random_next and not b:
                    a, b = _split_segment(chunk[0])  # a true continuation inside one segment, if it has two words
                if objective == "nsp" and (random_next or not b):
                    label = 1
                    other = int(rng.integers(0, len(documents) - 1))
                    other += other >= index  # any document but this one
                    start = int(rng.integers(0, len(documents[other])))
                    b, filled, wanted = [], 0, target - sum(len(s[0]) for s in a)
                    for segment in documents[other][start:]:
                        b.append(segment)
                        filled += len(segment[0])
                        if filled >= wanted:
                            break
                    j -= len(chunk) - a_end  # the unused continuation is not wasted: it starts the next chunk
                elif objective == "sop":
                    if not b:  # a single segment: no order to predict, and no borrowing from another document
                        chunk, length = [], 0
                        j += 1
                        continue
                    if rng.random() < 0.5:
                        a, b, label = b, a, 1
                (a_ids, a_starts), (b_ids, b_starts) = _truncate_pair(a, b, max_tokens, rng)
                ids = np.concatenate([[special_ids.cls], a_ids, [special_ids.sep], b_ids, [special_ids.sep]])
                starts = np.concatenate([[1], a_starts, [1], b_starts, [1]])
                special = np.zeros(len(ids), bool)
                special[[0, len(a_ids) + 1, len(ids) - 1]] = True
                token_types = np.concatenate([np.zeros(len(a_ids) + 2), np.ones(len(b_ids) + 1)]).astype(ID_DTYPE)
                examples.append(_example(ids, starts, special, token_type_ids=token_types,
                                         pair_label=np.array(label, ID_DTYPE), document=np.array(index, ID_DTYPE)))
                chunk, length = [], 0
            j += 1
    return examples


def mask_statically(examples: list[dict[str, np.ndarray]], rng: np.random.Generator, special_ids: SpecialIds,
                    vocab_size: int, **masking: Any) -> None:
    """Draw each example's mask once (BERT's static masking; also the fixed validation set), in place."""
    for example in examples:
        example["masked_ids"], example["labels"] = mask_example(
            example["input_ids"], example["word_starts"], ~example["special"], rng, special_ids.mask, vocab_size,
            **masking)


# ------------------------------------------------------------------------------------------------ collator


class DynamicMasking(torch.utils.data.Dataset):
    """Examples whose masks are redrawn every epoch (RoBERTa). Example i in epoch e is masked by a generator seeded
    with (seed, e, i): a resumed run replays exactly the masks of an uninterrupted one, which a mask drawn from the
    global RNG at collate time would not (the data loader prefetches a batch ahead of the checkpointed RNG state)."""

    def __init__(self, examples: list[dict[str, np.ndarray]], seed: int, special_ids: SpecialIds, vocab_size: int,
                 **masking: Any):
        self.examples, self.seed, self.special_ids, self.vocab_size = examples, seed, special_ids, vocab_size
        self.masking, self.epoch = masking, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = dict(self.examples[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        example["masked_ids"], example["labels"] = mask_example(
            example["input_ids"], example["word_starts"], ~example["special"], rng, self.special_ids.mask,
            self.vocab_size, **self.masking)
        return example


class PretrainCollator:
    """Pads a list of examples into a batch.

    mlm: `input_ids` are the example's masked ids and `labels` [B, T] its targets (IGNORE where not predicted);
    pair objectives add `pair_labels` [B]. clm: `labels` = input ids, IGNORE on padding (by position: GPT-2 pads
    with its end-of-text token, which is a real target elsewhere).
    """

    def __init__(self, objective: str, special_ids: SpecialIds):
        self.objective, self.special_ids = objective, special_ids

    def __call__(self, examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        width = -(-max(len(e["input_ids"]) for e in examples) // 8) * 8
        batch_size = len(examples)
        input_ids = torch.full((batch_size, width), self.special_ids.pad, dtype=torch.long)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE, dtype=torch.long)
        token_types = torch.zeros((batch_size, width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            attention[row, :n] = 1
            if self.objective == "clm":
                input_ids[row, :n] = torch.from_numpy(example["input_ids"].astype(np.int64))
                labels[row, :n] = input_ids[row, :n]
                continue
            input_ids[row, :n] = torch.from_numpy(example["masked_ids"])
            labels[row, :n] = torch.from_numpy(example["labels"])
            if "token_type_ids" in example:
                token_types[row, :n] = torch.from_numpy(example["token_type_ids"].astype(np.int64))
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if self.objective != "clm":
            batch["token_type_ids"] = token_types
        if "pair_label" in examples[0]:
            batch["pair_labels"] = torch.tensor([int(e["pair_label"]) for e in examples], dtype=torch.long)
        return batch
