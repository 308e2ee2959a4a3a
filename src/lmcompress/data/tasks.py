"""Labelled task data: columns detected, labels mapped to ids, fixed seeded splits recorded.

`load_task(cfg)` is the single entry point every stage uses, so the same DataConfig always yields exactly the
same train/validation/test rows; the split record (seed, sizes, a fingerprint of the test rows) is written into
each run's lmcompress.json and checked again when a later stage evaluates.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from .. import catalog
from ..config import DataConfig
from ..errors import LmcError
from . import ner, qa, readers

log = logging.getLogger("lmcompress")

TEXT_NAMES = ("text", "sentence", "sentence1", "text_a", "text1", "review", "content", "document", "premise", "question")
PAIR_NAMES = {"sentence1": "sentence2", "text_a": "text_b", "text1": "text2", "premise": "hypothesis"}
GENERIC_PAIR_NAMES = ("text_pair", "sentence2", "text_b", "text2", "hypothesis")
LABEL_NAMES = ("label", "labels", "category", "class", "target", "score", "sentiment", "y")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    """Three splits, each a frame with columns text, [text_pair], label (ids for classification, floats for regression),
    or, for token classification, tokens, tags (tag ids per word) and text (the words joined, for latency), or, for
    question answering, qa.QA_COLUMNS plus text / text_pair (question / context, for latency)."""

    splits: dict[str, pd.DataFrame]
    task: str  # "classification" | "regression" | "token-classification" | "question-answering"
    labels: list[str] | None  # label (or tag) names in id order; None for regression
    has_pair: bool
    split_record: dict[str, Any] = field(default_factory=dict)
    qa_options: qa.QAOptions | None = None  # question answering: windowing and decoding

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels is not None else 1


# ------------------------------------------------------------------------------------------------------------


def _raw_frames(cfg: DataConfig) -> tuple[pd.DataFrame | dict[str, pd.DataFrame], str]:
    """Read the source named by cfg.data -> (frame or per-split frames, description)."""
    name = cfg.data
    if catalog.is_zoo_name(name):
        entry = catalog.get(name)
        if entry.name == "rotten-tomatoes":
            return readers.read_rotten_tomatoes(entry.require()), name
        if entry.name == "fortunes":
            return readers.read_fortunes(entry.require()), name
        if entry.name == "debates-2016":
            return readers.read_debates(entry.require()), name
        if entry.kind == "model":
            raise LmcError(f"'{name}' is a model, not a dataset; pass it as --model")
        raise LmcError(f"'{name}' is a pre-training corpus without labels; use it with `lmcompress pretrain`, "
                       "`distill-lm` or `prune-lm`")
    path = Path(name).expanduser()
    if not path.exists():
        raise LmcError(f"--data {name}: no such file or folder, and not a zoo name ({', '.join(catalog.ENTRIES)})")
    return readers.read_path(path, cfg.encoding), str(path.resolve())


def pick_column(frame: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], role: str, flag: str) -> str | None:
    columns = [str(c) for c in frame.columns]
    if wanted is not None:
        if wanted not in columns:
            raise LmcError(f"{role} column '{wanted}' not found; columns are: {', '.join(columns)} (set {flag})")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    return None


def resolve_columns(frame: pd.DataFrame, cfg: DataConfig) -> tuple[str, str | None, str]:
    """(text, pair or None, label) column names, detected when not given."""
    label = pick_column(frame, cfg.label_column, LABEL_NAMES, "label", "--label-column")
    text = pick_column(frame, cfg.text_column, TEXT_NAMES, "text", "--text-column")
    if text is None:
        string_cols = [c for c in frame.columns if frame[c].dtype == object and c != label and c != cfg.split_column]
        if len(string_cols) == 1:
            text = string_cols[0]
        else:
            raise LmcError(
                f"cannot tell which column holds the text; columns are: {', '.join(map(str, frame.columns))} "
                "(set --text-column)"
            )
    if label is None:
        raise LmcError(
            f"no label column found; columns are: {', '.join(map(str, frame.columns))} (set --label-column)"
        )
    if cfg.text_pair_column is not None:
        pair = pick_column(frame, cfg.text_pair_column, (), "text pair", "--text-pair-column")
    elif cfg.text_column is None:
        partner = PAIR_NAMES.get(text.lower())
        pair = pick_column(frame, None, (partner,) if partner else GENERIC_PAIR_NAMES, "text pair", "")
    else:
        pair = None
    if len({text, label, pair} - {None}) < (3 if pair else 2):
        raise LmcError(f"text, pair and label columns must differ (got text={text}, pair={pair}, label={label})")
    return text, pair, label


def _normalise(frame: pd.DataFrame, text: str, pair: str | None, label: str, where: str) -> pd.DataFrame:
    columns = {text: "text", label: "label"} | ({pair: "text_pair"} if pair else {})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LmcError(f"{where}: column(s) {', '.join(missing)} missing; columns are: {', '.join(map(str, frame.columns))}")
    out = frame[list(columns)].rename(columns=columns)
    before = len(out)
    out = out.dropna()
    out = out[(out["text"].astype(str).str.strip() != "") & (out["label"].astype(str).str.strip() != "")]
    if len(out) < before:
        log.warning("%s: dropped %d of %d rows with an empty text or label", where, before - len(out), before)
    if len(out) == 0:
        raise LmcError(f"{where}: no rows left with both a text and a label")
    out["text"] = out["text"].astype(str)
    if not pd.api.types.is_numeric_dtype(out["label"]):  # labels read as strings: numbers when all are numbers
        numeric = pd.to_numeric(out["label"], errors="coerce")
        if numeric.notna().all():
            out["label"] = numeric
    if pair:
        out["text_pair"] = out["text_pair"].astype(str)
    return out.reset_index(drop=True)


def _detect_task(labels: pd.Series, requested: str) -> str:
    if requested != "auto":
        return requested
    if pd.api.types.is_float_dtype(labels) and not np.all(np.mod(labels.to_numpy(), 1) == 0):
        return "regression"
    return "classification"


def _label_names(train_labels: pd.Series) -> list[str]:
    values = train_labels.unique().tolist()
    try:
        values = sorted(values)
    except TypeError:
        values = sorted(values, key=str)
    return [str(v) for v in values]


def _split_counts(n: int, fraction: float) -> int:
    return max(1, math.ceil(n * fraction))


def _stratified_split(frame: pd.DataFrame, n_out: int, seed: int, stratify: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off n_out rows (stratified by label where every class has >= 2 rows)."""
    if n_out >= len(frame):
        raise LmcError(f"too few rows ({len(frame)}) to hold out {n_out} for validation/test; add data or lower the fractions")
    strat = None
    if stratify:
        counts = frame["label"].value_counts()
        if counts.min() >= 2 and n_out >= counts.size and len(frame) - n_out >= counts.size:
            strat = frame["label"]
        else:
            log.warning("some labels have fewer than 2 rows; the split is random, not stratified")
    keep, out = train_test_split(frame, test_size=n_out, random_state=seed, stratify=strat, shuffle=True)
    return keep.reset_index(drop=True), out.reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """Short stable hash of a split's rows, so stages can check they score the very same examples."""
    digest = hashlib.sha256()
    for row in frame.itertuples(index=False):
        digest.update(repr(tuple(row)).encode("utf-8"))
    return digest.hexdigest()[:16]


def _unstratified_splits(cfg: DataConfig, raw: pd.DataFrame | dict[str, pd.DataFrame], split_fn,
                         record: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """A folder's own split files (a missing split carved out of train), or split_fn(frame, validation_fraction,
    test_fraction, seed) over one file: sentences (NER) or contexts (QA), where labels cannot stratify."""
    if not isinstance(raw, dict):
        record["split_from"] = "seeded"
        return split_fn(raw, cfg.validation_fraction, cfg.test_fraction, cfg.split_seed)
    splits, record["split_from"] = dict(raw), "files"
    for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if split not in splits:  # carved out of train with the recorded seed
            parts = split_fn(splits["train"], 0.0, fraction, cfg.split_seed)
            splits["train"] = pd.concat([parts["validation"], parts["train"]], ignore_index=True)
            splits[split] = parts["test"]
    return splits


def _token_source(cfg: DataConfig) -> tuple[pd.DataFrame | dict[str, pd.DataFrame], str] | None:
    """(frames, source) when cfg.data is token-classification data (CoNLL, token JSONL, peoples-daily-ner)."""
    if catalog.is_zoo_name(cfg.data):
        entry = catalog.get(cfg.data)
        return (ner.read_peoples_daily_ner(entry.require()), entry.name) if entry.name == "peoples-daily-ner" else None
    path = Path(cfg.data).expanduser()
    if path.exists() and (cfg.task == ner.TOKEN_TASK or ner.looks_like_token_data(path)):
        return ner.read_token_source(path, cfg.encoding), str(path.resolve())
    if cfg.task == ner.TOKEN_TASK:
        raise LmcError(f"--data {cfg.data}: no such file or folder")
    return None


def _load_token_task(cfg: DataConfig, raw: pd.DataFrame | dict[str, pd.DataFrame], source: str) -> TaskData:
    """Sentences -> seeded sentence-level split (or the folder's own files) -> tag ids; the same record as
    sequence tasks (seed, sizes, test fingerprint) plus the tag scheme."""
    record: dict[str, Any] = {"source": source, "seed": cfg.split_seed, "columns": {"tokens": "tokens", "tags": "tags"}}
    splits = _unstratified_splits(cfg, raw, ner.split_sentences, record)
    labels = ner.map_tags(splits)
    record["tag_scheme"] = ner.tag_scheme(labels)
    if cfg.max_train_examples is not None:
        splits["train"] = splits["train"].iloc[: cfg.max_train_examples].reset_index(drop=True)
    record["sizes"] = {s: len(splits[s]) for s in SPLITS}
    record["test_fingerprint"] = fingerprint(splits["test"])
    return TaskData(splits={s: splits[s] for s in SPLITS}, task=ner.TOKEN_TASK, labels=labels, has_pair=False,
                    split_record=record)


def _qa_source(cfg: DataConfig) -> tuple[pd.DataFrame | dict[str, pd.DataFrame], str] | None:
    """(frames, source) when cfg.data is SQuAD-format question answering data."""
    if catalog.is_zoo_name(cfg.data):
        return None
    path = Path(cfg.data).expanduser()
    if path.exists() and (cfg.task == qa.QA_TASK or qa.looks_like_qa_data(path)):
        return qa.read_qa_source(path, cfg.encoding), str(path.resolve())
    if cfg.task == qa.QA_TASK:
        raise LmcError(f"--data {cfg.data}: no such SQuAD file or folder (no question-answering data ships in the zoo)")
    return None


def _load_qa_task(cfg: DataConfig, raw: pd.DataFrame | dict[str, pd.DataFrame], source: str) -> TaskData:
    """Questions -> a seeded split by context (or the folder's own files; a missing split is carved out of train the
    same way), with the same record as other tasks plus whether any question is unanswerable (SQuAD v2)."""
    record: dict[str, Any] = {"source": source, "seed": cfg.split_seed, "columns": {c: c for c in qa.QA_COLUMNS}}
    splits = _unstratified_splits(cfg, raw, qa.split_by_context, record)
    if cfg.max_train_examples is not None:
        splits["train"] = splits["train"].iloc[: cfg.max_train_examples].reset_index(drop=True)
    record["unanswerable"] = any(bool((~splits[s]["answer_texts"].map(bool)).any()) for s in SPLITS)
    record["sizes"] = {s: len(splits[s]) for s in SPLITS}
    record["test_fingerprint"] = fingerprint(splits["test"][list(qa.QA_COLUMNS)])
    options = qa.QAOptions(cfg.doc_stride or qa.default_stride(cfg.max_length), cfg.max_answer_length)
    return TaskData(splits={s: splits[s] for s in SPLITS}, task=qa.QA_TASK, labels=None, has_pair=True,
                    split_record=record, qa_options=options)


def load_task(cfg: DataConfig) -> TaskData:
    """Read, normalise, split and label-map the data named by cfg."""
    token = _token_source(cfg)
    if token is not None:
        return _load_token_task(cfg, *token)
    squad = _qa_source(cfg)
    if squad is not None:
        return _load_qa_task(cfg, *squad)
    raw, source = _raw_frames(cfg)
    record: dict[str, Any] = {"source": source, "seed": cfg.split_seed}

    if isinstance(raw, dict):  # a folder with train/validation/test files
        first = raw["train"]
        text, pair, label = resolve_columns(first, cfg)
        splits = {s: _normalise(f, text, pair, label, f"{s} split") for s, f in raw.items()}
        record["split_from"] = "files"
    else:
        text, pair, label = resolve_columns(raw, cfg)
        if cfg.split_column is not None:
            if cfg.split_column not in raw.columns:
                raise LmcError(f"split column '{cfg.split_column}' not found; columns are: {', '.join(map(str, raw.columns))}")
            names = raw[cfg.split_column].astype(str).str.lower().map(SPLIT_ALIASES)
            bad = raw[cfg.split_column][names.isna()].unique().tolist()
            if bad:
                raise LmcError(f"split column '{cfg.split_column}' has values {bad[:5]}; use train/validation/test")
            splits = {s: _normalise(raw[names == s], text, pair, label, f"{s} split") for s in SPLITS if (names == s).any()}
            if "train" not in splits:
                raise LmcError(f"split column '{cfg.split_column}' marks no row as train")
            record["split_from"] = "column"
        else:
            splits = {"train": _normalise(raw, text, pair, label, source)}
            record["split_from"] = "seeded"
    record["columns"] = {"text": text, "text_pair": pair, "label": label}

    task = _detect_task(splits["train"]["label"], cfg.task)
    stratify = task == "classification"
    if task == "classification" and splits["train"]["label"].nunique() < 2:
        only = splits["train"]["label"].iloc[0]
        raise LmcError(f"the label column '{label}' has a single value ({only!r}); classification needs at least two labels")

    # Carve whatever split the source did not provide out of train, with the recorded seed.
    total = sum(len(f) for f in splits.values())
    for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if split not in splits:
            splits["train"], splits[split] = _stratified_split(
                splits["train"], _split_counts(total, fraction), cfg.split_seed, stratify
            )

    labels: list[str] | None = None
    if task == "classification":
        labels = _label_names(splits["train"]["label"])
        to_id = {name: i for i, name in enumerate(labels)}
        for split, frame in splits.items():
            names = frame["label"].map(str)
            unknown = sorted(set(names) - set(to_id))
            if unknown:
                raise LmcError(
                    f"{split} split has label(s) {unknown[:5]} that never occur in train ({', '.join(labels[:10])})"
                )
            frame["label"] = names.map(to_id).astype("int64")
    else:
        for split, frame in splits.items():
            try:
                frame["label"] = frame["label"].astype("float32")
            except (TypeError, ValueError):
                raise LmcError(f"regression labels in the {split} split must be numbers") from None

    if cfg.max_train_examples is not None:
        splits["train"] = splits["train"].iloc[: cfg.max_train_examples].reset_index(drop=True)

    record["sizes"] = {s: len(splits[s]) for s in SPLITS}
    record["test_fingerprint"] = fingerprint(splits["test"])
    return TaskData(splits={s: splits[s] for s in SPLITS}, task=task, labels=labels, has_pair=pair is not None,
                    split_record=record)
