"""Extractive question answering (SQuAD format): reading, splitting by context, sliding-window features, n-best
span decoding and exact-match / F1.

A question's context can be longer than the model's window, so each (question, context) pair becomes one or more
*features*: windows of the context that overlap by `stride` tokens, each prefixed by the question. Training marks the
answer's first and last token in the window that holds it whole, and the first position (the CLS slot) elsewhere.
Evaluation scores every window, maps each candidate span back to characters of the context through the tokenizer's
offset mapping, and keeps the best span over all windows of the example. Scores follow the official SQuAD script
(v1.1, plus v2's empty answer for unanswerable questions), with Chinese characters counted one token each for F1.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from ..errors import LmcError
from .readers import decode, find_split_files, json_lines

log = logging.getLogger("lmcompress")

QA_TASK = "question-answering"
QA_COLUMNS = ("id", "question", "context", "answer_texts", "answer_starts")
CLS_INDEX = 0  # the "no answer in this window" target: the first position (CLS for BERT, <s> for RoBERTa)


@dataclass(frozen=True)
class QAOptions:
    """How question answering data is windowed and decoded (from DataConfig; recorded with each run's data)."""

    doc_stride: int  # tokens shared by consecutive windows
    max_answer_length: int  # longest span the decoder considers, in tokens
    n_best: int = 20  # start and end candidates per window


# ------------------------------------------------------------------------------------------------ readers


def _answers(raw: Any, where: str) -> tuple[list[str], list[int]]:
    """SQuAD's list of {text, answer_start} or the datasets layout {text: [...], answer_start: [...]}."""
    if isinstance(raw, dict) and "text" in raw:
        texts, starts = list(raw["text"]), list(raw.get("answer_start", []))
    elif isinstance(raw, list):
        try:
            texts, starts = [a["text"] for a in raw], [a["answer_start"] for a in raw]
        except (TypeError, KeyError):
            raise LmcError(f"{where}: each answer needs 'text' and 'answer_start'") from None
    else:
        raise LmcError(f"{where}: 'answers' must be a list of {{text, answer_start}} or {{text: [...], answer_start: "
                       "[...]}}")
    if len(texts) != len(starts) or not all(isinstance(s, int) and s >= 0 for s in starts):
        raise LmcError(f"{where}: every answer needs a non-negative integer 'answer_start'")
    return [str(t) for t in texts], starts


def _record(question: Any, context: Any, answers: Any, qid: Any, where: str) -> dict[str, Any]:
    if not isinstance(question, str) or not isinstance(context, str) or not question.strip() or not context.strip():
        raise LmcError(f"{where}: 'question' and 'context' must be non-empty strings")
    texts, starts = _answers(answers if answers is not None else [], where)
    return {"id": str(qid), "question": question.strip(), "context": context, "answer_texts": texts,
            "answer_starts": starts}


def read_squad(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}) or JSONL with question, context and
    answers per line -> frame with QA_COLUMNS (+ text = question, text_pair = context, for latency batches)."""
    raw_text = decode(path.read_bytes(), path, encoding)
    records: list[dict[str, Any]] = []
    try:
        document = json.loads(raw_text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and "data" in document:
        if not isinstance(document["data"], list):
            raise LmcError(f"{path}: 'data' must be a list of articles")
        for a, article in enumerate(document["data"]):
            for p, paragraph in enumerate((article or {}).get("paragraphs", []) if isinstance(article, dict) else []):
                where = f"{path}: article {a}, paragraph {p}"
                if not isinstance(paragraph, dict) or "context" not in paragraph:
                    raise LmcError(f"{where}: a paragraph needs 'context' and 'qas'")
                for q, qa in enumerate(paragraph.get("qas", [])):
                    if not isinstance(qa, dict):
                        raise LmcError(f"{where}: question {q} is not an object")
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    records.append(_record(qa.get("question"), paragraph["context"], answers,
                                           qa.get("id", f"{a}-{p}-{q}"), f"{where}, question {q}"))
    else:
        for number, row in json_lines(raw_text.splitlines(), str(path), ("question", "context"), "question-answering"):
            records.append(_record(row["question"], row["context"], row.get("answers"), row.get("id", number),
                                   f"{path}:{number}"))
    if not records:
        raise LmcError(f"{path} holds no questions")
    return _frame(records, str(path))


def _frame(records: list[dict[str, Any]], source: str) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=list(QA_COLUMNS))
    if frame["id"].duplicated().any():
        dup = frame["id"][frame["id"].duplicated()].iloc[0]
        raise LmcError(f"{source}: question id {dup!r} occurs twice; ids must be unique")
    bad = [i for i, row in enumerate(frame.itertuples())
           if any(row.context[s:s + len(t)] != t for t, s in zip(row.answer_texts, row.answer_starts))]
    if bad:
        row = frame.iloc[bad[0]]
        raise LmcError(f"{source}: {len(bad)} question(s) have an answer whose text is not found at its "
                       f"answer_start in the context (first: id {row['id']!r}); offsets count characters from 0")
    frame["text"], frame["text_pair"] = frame["question"], frame["context"]
    return frame


def is_squad_file(path: Path) -> bool:
    """A .json/.jsonl file whose top level holds SQuAD's 'data' or whose first line has 'question' and 'context'."""
    if path.suffix.lower() not in (".json", ".jsonl") or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096)
    if re.match(r'\s*\{\s*"(data|version)"', head):
        return True
    first = head.lstrip().split("\n", 1)[0]
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "question" in row and "context" in row


def _split_files(folder: Path) -> dict[str, Path]:
    return find_split_files(folder, is_squad_file, loose=True)  # SQuAD's own names: train-v1.1.json, dev-v1.1.json


def looks_like_qa_data(path: Path) -> bool:
    if path.is_dir():
        train = _split_files(path).get("train")
        return train is not None
    return is_squad_file(path)


def read_qa_source(path: Path, encoding: str = "utf-8") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A SQuAD file, or a folder with train[/dev/test] SQuAD files, in `encoding`."""
    if path.is_dir():
        files = _split_files(path)
        if "train" not in files:
            raise LmcError(f"folder {path} has no train file (train.json, train-v1.1.json, ...)")
        return {split: read_squad(file, encoding) for split, file in files.items()}
    return read_squad(path, encoding)


def split_by_context(frame: pd.DataFrame, validation_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, pd.DataFrame]:
    """Seeded split of whole contexts, so no paragraph is read in training and asked about again in test."""
    contexts = frame["context"].drop_duplicates().tolist()
    order = np.random.default_rng(seed).permutation(len(contexts))
    n_test = max(1, round(len(contexts) * test_fraction))
    n_validation = max(1, round(len(contexts) * validation_fraction))
    if len(contexts) - n_test - n_validation < 1:
        raise LmcError(f"{len(contexts)} distinct contexts are too few to split into train, validation and test "
                       "(the split keeps each context in one split)")
    part = np.empty(len(contexts), dtype=object)
    part[order[:n_test]], part[order[n_test:n_test + n_validation]] = "test", "validation"
    part[order[n_test + n_validation:]] = "train"
    of_context = dict(zip(contexts, part))
    where = frame["context"].map(of_context)
    return {name: frame[where == name].reset_index(drop=True) for name in ("train", "validation", "test")}


# ------------------------------------------------------------------------------------------------ features


def default_stride(max_length: int) -> int:
    return max(1, max_length // 4)


def _encode(frame: pd.DataFrame, tokenizer, max_length: int, stride: int):
    """Question + context windows: a BatchEncoding with overflow_to_sample_mapping and offset_mapping."""
    if not getattr(tokenizer, "is_fast", False):
        raise LmcError("question answering needs a fast (Rust) tokenizer: it maps tokens back to characters")
    questions = frame["question"].tolist()
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length - longest - specials <= stride:
        raise LmcError(f"a question of {longest} tokens leaves {max_length - longest - specials} context tokens per "
                       f"window, not more than the stride {stride}: raise --max-length or lower --doc-stride")
    return tokenizer(questions, frame["context"].tolist(), truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int]:
    """First and last token index of the context (sequence 1) in a window."""
    positions = [i for i, s in enumerate(sequence_ids) if s == 1]
    return positions[0], positions[-1]


def answer_positions(offsets: list[tuple[int, int]], sequence_ids: list[int | None], answer_start: int | None,
                     answer_end: int | None) -> tuple[int, int]:
    """Token indices (start, end) of the answer's characters [answer_start, answer_end) in this window, or
    (CLS_INDEX, CLS_INDEX) when the window does not hold the whole answer (or there is none)."""
    if answer_start is None or answer_end is None:
        return CLS_INDEX, CLS_INDEX
    first, last = _context_span(sequence_ids)
    if offsets[first][0] > answer_start or offsets[last][1] < answer_end:
        return CLS_INDEX, CLS_INDEX
    start = first
    while start <= last and offsets[start][1] <= answer_start:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= answer_end:
        end -= 1
    return (start, end) if start <= end else (CLS_INDEX, CLS_INDEX)


def tokenize_train_features(frame: pd.DataFrame, tokenizer, max_length: int, stride: int):
    """-> datasets.Dataset: input_ids, attention_mask, [token_type_ids], start_positions, end_positions (one row per
    window; the first answer is the training target)."""
    encoded = _encode(frame, tokenizer, max_length, stride)
    starts, ends = [], []
    for i, example in enumerate(encoded["overflow_to_sample_mapping"]):
        row = frame.iloc[example]
        begin = row["answer_starts"][0] if row["answer_texts"] else None
        end = begin + len(row["answer_texts"][0]) if begin is not None else None
        s, e = answer_positions(encoded["offset_mapping"][i], encoded.sequence_ids(i), begin, end)
        starts.append(s)
        ends.append(e)
    columns = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
    return datasets.Dataset.from_dict(columns | {"start_positions": starts, "end_positions": ends})


@dataclass
class EvalFeatures:
    """Windows to score, and how to map their token positions back to the examples' characters."""

    dataset: Any  # datasets.Dataset of model inputs, one row per window
    example_of: list[int]  # window -> row of the frame
    offsets: list[list[tuple[int, int] | None]]  # window -> per token (char start, char end) in the context, or None


def tokenize_eval_features(frame: pd.DataFrame, tokenizer, max_length: int, stride: int) -> EvalFeatures:
    encoded = _encode(frame, tokenizer, max_length, stride)
    offsets = [[tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][i], encoded.sequence_ids(i))]
               for i in range(len(encoded["input_ids"]))]
    columns = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
    return EvalFeatures(datasets.Dataset.from_dict(columns), list(encoded["overflow_to_sample_mapping"]), offsets)


# ------------------------------------------------------------------------------------------------ decoding


def best_token_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[tuple[int, int] | None],
                    n_best: int, max_answer_length: int) -> tuple[float, int, int] | None:
    """One window: the highest start+end score over spans inside the context, at most max_answer_length tokens long,
    among the n_best starts and n_best ends -> (score, start token, end token) or None when no span is valid."""
    best = None
    length = len(offsets)
    for s in np.argsort(start_logits[:length])[::-1][:n_best]:
        if offsets[s] is None:
            continue
        for e in np.argsort(end_logits[:length])[::-1][:n_best]:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(s), int(e))
    return best


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[tuple[int, int] | None], n_best: int,
              max_answer_length: int) -> tuple[float, int, int] | None:
    """best_token_span in the context's characters -> (score, char start, char end) or None."""
    best = best_token_span(start_logits, end_logits, offsets, n_best, max_answer_length)
    return None if best is None else (best[0], offsets[best[1]][0], offsets[best[2]][1])


def decode_answers(start_logits: list[np.ndarray], end_logits: list[np.ndarray], features: EvalFeatures,
                   contexts: list[str], n_best: int, max_answer_length: int, allow_empty: bool) -> list[str]:
    """Per example, the best span over all its windows (start_logits[w] / end_logits[w]: [T_w] of window w). With
    allow_empty (data with unanswerable questions) the empty answer wins when its score, the CLS slot's start+end in
    the window where that is lowest (as the SQuAD v2 baselines), beats every span."""
    spans: dict[int, tuple[float, int, int]] = {}
    empty: dict[int, float] = {}
    for w, example in enumerate(features.example_of):
        span = best_span(start_logits[w], end_logits[w], features.offsets[w], n_best, max_answer_length)
        if span is not None and (example not in spans or span[0] > spans[example][0]):
            spans[example] = span
        null = float(start_logits[w][CLS_INDEX] + end_logits[w][CLS_INDEX])
        empty[example] = min(null, empty.get(example, null))
    answers = []
    for example, context in enumerate(contexts):
        span = spans.get(example)
        if span is None or (allow_empty and empty.get(example, -np.inf) > span[0]):
            answers.append("")
        else:
            answers.append(context[span[1]:span[2]])
    return answers


# ------------------------------------------------------------------------------------------------ metrics

_CJK_PUNCTUATION = "，。！？、；：“”‘’（）《》【】「」…—·"
_PUNCTUATION = set(string.punctuation) | set(_CJK_PUNCTUATION)
_CJK = re.compile(r"([\u4e00-\u9fff])")


def normalize_answer(text: str) -> str:
    """The SQuAD script's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Normalised words, with each Chinese character a word of its own (text without spaces still gets partial
    credit)."""
    return _CJK.sub(r" \1 ", normalize_answer(text)).split()


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = answer_tokens(prediction), answer_tokens(gold)
    if not predicted or not expected:  # SQuAD v2: an empty answer scores 1 only against an empty answer
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], gold_answers: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 (each the best over an example's gold answers; none means the empty answer), as
    fractions in [0, 1] like every other metric here (the SQuAD script prints them x 100)."""
    if len(predictions) != len(gold_answers) or not predictions:
        raise ValueError("one prediction per example, at least one example")
    exact = f1 = 0.0
    for prediction, golds in zip(predictions, gold_answers):
        golds = golds or [""]
        exact += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    return {"exact_match": exact / len(predictions), "f1": f1 / len(predictions)}
