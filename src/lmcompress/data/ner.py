"""Token classification (NER) data: CoNLL files, JSONL (`tokens`, `tags`) and the People's Daily zoo task, read into
frames of `tokens` / `tags` (+ a `text` column for latency and fingerprints), split and label-mapped like sequence
tasks (`load_task` hands them here), and aligned to sub-tokens for training.

Alignment: each word's first sub-token carries its tag, every other position is IGNORE, so the loss and the teacher
KD see one prediction per word. Scoring is per word, on the original sentence: a word the tokenizer dropped or that
truncation cut off counts as predicted "O", so entity F1 is never flattered by what the model did not see.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import datasets
import pandas as pd
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import BILOU, IOB2, IOBES

from ..errors import LmcError
from .readers import decode, find_split_files, json_lines

log = logging.getLogger("lmcompress")

TOKEN_TASK = "token-classification"
IGNORE = -100
CONLL_SUFFIXES = (".conll", ".conll03", ".bio", ".iob", ".bioes", ".iobes")
_TAG = re.compile(r"^(?:O|[BIESU]-\S+)$")
# People's Daily 1998 POS tags -> entity types (person, place, organisation)
PEOPLES_DAILY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
_PD_SENTENCE_END = ("。", "！", "？")


# ------------------------------------------------------------------------------------------------ readers


def read_conll(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """CoNLL-style text: a token and its tag per line (first and last whitespace-separated columns), a blank line
    between sentences; `-DOCSTART-` lines and `#` comments are skipped."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines = decode(path.read_bytes(), path, encoding).splitlines()
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-" or line.startswith("#"):
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise LmcError(f"{path}:{number}: expected a token and a tag separated by whitespace, got {line[:60]!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    return _frame(sentences, str(path))


def read_token_jsonl(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """One JSON object per line with `tokens` and `tags` lists of equal length."""
    sentences = []
    lines = decode(path.read_bytes(), path, encoding).splitlines()
    for number, record in json_lines(lines, str(path), ("tokens", "tags"), "token-classification"):
        tokens, tags = record["tokens"], record["tags"]
        if not (isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)):
            raise LmcError(f"{path}:{number}: 'tokens' and 'tags' must be lists of the same length")
        sentences.append(([str(t) for t in tokens], [str(t) for t in tags]))
    return _frame(sentences, str(path))


def is_token_jsonl(path: Path) -> bool:
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and "tokens" in record and "tags" in record
    return False


def peoples_daily_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    """People's Daily Jan 1998 (word/POS, `[...]nt` compounds) -> character-level BIO sentences.

    nr -> PER (a surname and given name tagged nr side by side are one person), ns -> LOC, nt -> ORG; a bracketed
    compound takes its closing tag for all its words. Lines are split after 。！？ so sentences stay short.
    """
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        chars: list[str] = []
        tags: list[str] = []
        previous_type = None
        compound: list[str] | None = None
        for item in line.split():
            if item.startswith("[") and compound is None:
                compound, item = [], item[1:]
            word, _, pos = item.rpartition("/")
            if compound is not None:
                closing = re.match(r"^(.*?)\](\w+)$", pos)
                if closing is None:
                    compound.append(word)
                    continue
                compound.append(word)
                word, pos, compound = "".join(compound), closing.group(2), None
            if not word:
                continue
            entity = PEOPLES_DAILY_TYPES.get(pos)
            continues = entity == "PER" and previous_type == "PER"  # 江/nr 泽民/nr is one person
            for i, char in enumerate(word):
                chars.append(char)
                tags.append("O" if entity is None else f"{'I' if i or continues else 'B'}-{entity}")
            previous_type = entity
            if word in _PD_SENTENCE_END:
                sentences.append((chars, tags))
                chars, tags, previous_type = [], [], None
        if chars:
            sentences.append((chars, tags))
    return sentences


def read_peoples_daily_ner(path: Path) -> pd.DataFrame:
    return _frame(peoples_daily_sentences(path), "peoples-daily-ner", joiner="")


def _frame(sentences: list[tuple[list[str], list[str]]], source: str, joiner: str | None = None) -> pd.DataFrame:
    if not sentences:
        raise LmcError(f"{source} holds no sentences")
    if joiner is None:  # Chinese characters read as one string; other words with spaces
        sample = "".join(t for tokens, _ in sentences[:50] for t in tokens)
        joiner = "" if sample and sum("\u4e00" <= c <= "\u9fff" for c in sample) / len(sample) > 0.3 else " "
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences],
                         "text": [joiner.join(s[0]) for s in sentences]})


def read_token_source(path: Path, encoding: str = "utf-8") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A CoNLL/JSONL file, or a folder with train[/validation/test] files of those formats, in `encoding`."""
    if path.is_dir():
        files = _split_files(path)
        if "train" not in files:
            raise LmcError(f"folder {path} has no train file (train.conll, train.jsonl, ...)")
        return {split: read_token_source(file, encoding) for split, file in files.items()}
    if is_token_jsonl(path):
        return read_token_jsonl(path, encoding)
    return read_conll(path, encoding)


def _split_files(folder: Path) -> dict[str, Path]:
    """train/validation/test token files in a folder, by the conventional names (dev, valid, ... accepted)."""
    return find_split_files(folder, lambda p: p.suffix.lower() in CONLL_SUFFIXES + (".txt",) or is_token_jsonl(p))


def looks_like_token_data(path: Path) -> bool:
    """A CoNLL suffix, token JSONL, or a folder whose train file is one of those."""
    if path.is_dir():
        train = _split_files(path).get("train")
        return train is not None and (train.suffix.lower() in CONLL_SUFFIXES or is_token_jsonl(train))
    return path.suffix.lower() in CONLL_SUFFIXES or is_token_jsonl(path)


# ------------------------------------------------------------------------------------------------ the task


def tag_scheme(tags: list[str]) -> str:
    """'BIO' or 'BIOES' from the tag names; anything else is refused."""
    bad = sorted({t for t in tags if not _TAG.match(t)})
    if bad:
        raise LmcError(f"tags {bad[:5]} are not BIO/BIOES tags (O, B-TYPE, I-TYPE, E-TYPE, S-TYPE)")
    prefixes = {t[0] for t in tags if t != "O"}
    return "BIOES" if prefixes & {"E", "S", "U"} else "BIO"


def tag_names(train_tags: pd.Series) -> list[str]:
    """O first, then entity tags sorted by type and prefix (a stable id order)."""
    names = sorted({t for tags in train_tags for t in tags} - {"O"}, key=lambda t: (t[2:], t[0]))
    return ["O", *names]


def split_sentences(frame: pd.DataFrame, validation_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, pd.DataFrame]:
    """Seeded sentence-level split (no stratification: a sentence holds many labels)."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = max(1, round(len(frame) * test_fraction))
    n_validation = max(1, round(len(frame) * validation_fraction))
    if len(frame) - n_test - n_validation < 1:
        raise LmcError(f"{len(frame)} sentences are too few to split into train, validation and test")
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_validation],
             "train": order[n_test + n_validation:]}
    return {name: frame.iloc[np.sort(rows)].reset_index(drop=True) for name, rows in parts.items()}


def map_tags(splits: dict[str, pd.DataFrame]) -> list[str]:
    """Tag names -> ids in every split (in place); a tag missing from train is an error."""
    names = tag_names(splits["train"]["tags"])
    tag_scheme(names)
    to_id = {name: i for i, name in enumerate(names)}
    for split, frame in splits.items():
        unknown = sorted({t for tags in frame["tags"] for t in tags} - set(to_id))
        if unknown:
            raise LmcError(f"{split} split has tag(s) {unknown[:5]} that never occur in train")
        frame["tags"] = [[to_id[t] for t in tags] for tags in frame["tags"]]
    return names


# ------------------------------------------------------------------------------------------------ alignment


def align_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Per sub-token label: the word's tag on its first sub-token, IGNORE on the rest and on special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else word_tags[word])
        previous = word
    return labels


def words_of_labelled_positions(word_ids: list[int | None]) -> list[int]:
    """The word index behind each labelled position, in order (first sub-tokens only)."""
    words, previous = [], None
    for word in word_ids:
        if word is not None and word != previous:
            words.append(word)
        previous = word
    return words


def tokenize_words(frame: pd.DataFrame, tokenizer, max_length: int) -> Any:
    """Frame with tokens, tags -> datasets.Dataset with input_ids, attention_mask, [token_type_ids], labels."""
    if not getattr(tokenizer, "is_fast", False):
        raise LmcError("token classification needs a fast (Rust) tokenizer: it maps sub-tokens back to words")
    dataset = datasets.Dataset.from_pandas(frame[["tokens", "tags"]], preserve_index=False)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = [align_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def entity_metrics(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> dict[str, float]:
    """Entity-level precision / recall / F1 (seqeval, strict span and type match) and per-word accuracy."""
    mode = {"BIO": IOB2, "BIOES": IOBES, "BILOU": BILOU}[scheme]
    kwargs = {"mode": "strict", "scheme": mode, "zero_division": 0}
    words = sum(len(g) for g in gold)
    return {"f1": float(f1_score(gold, predicted, **kwargs)),
            "precision": float(precision_score(gold, predicted, **kwargs)),
            "recall": float(recall_score(gold, predicted, **kwargs)),
            "word_accuracy": sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p)) / max(1, words)}
