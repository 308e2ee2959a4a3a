"""Fuzz the data readers with hypothesis: arbitrary bytes and CSV/JSONL shapes either load or raise LmcError."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmcompress.config import DataConfig
from lmcompress.data import load_task
from lmcompress.data.readers import read_path
from lmcompress.errors import LmcError

SETTINGS = settings(max_examples=int(os.environ.get("LMC_FUZZ_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".csv", ".tsv", ".jsonl", ".txt", ".parquet", ".csv.gz"]


def _write(content: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="lmc-fuzz-"))
    path = folder / f"data{suffix}"
    path.write_bytes(content)
    return path


def _load_or_lmc_error(path: Path) -> None:
    """Reading and building a task may fail, but only with our one-line error type."""
    try:
        read_path(path)
        load_task(DataConfig(data=str(path)))
    except LmcError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@SETTINGS
@given(content=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes(content, suffix):
    _load_or_lmc_error(_write(content, suffix))


cells = st.one_of(st.text(max_size=12), st.integers(-5, 5).map(str), st.floats(allow_nan=True).map(str),
                  st.sampled_from(["", "pos", "neg", '"', ",", "\n", "\t", "NaN", "None"]))


@SETTINGS
@given(header=st.lists(st.sampled_from(["text", "label", "sentence", "score", "x", "", "text"]), min_size=1, max_size=4),
       rows=st.lists(st.lists(cells, min_size=0, max_size=5), max_size=30), sep=st.sampled_from([",", "\t", ";"]))
def test_csv_shapes(header, rows, sep):
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    _load_or_lmc_error(_write("\n".join(lines).encode("utf-8"), ".tsv" if sep == "\t" else ".csv"))


@SETTINGS
@given(records=st.lists(st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=20), "label": st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 2),
                                                                              st.none(), st.floats(allow_nan=True))}),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=10)), max_size=40))
def test_jsonl_shapes(records):
    _load_or_lmc_error(_write("\n".join(json.dumps(r) for r in records).encode("utf-8"), ".jsonl"))


@SETTINGS
@given(texts=st.lists(st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and "\x00" not in t),
                      min_size=30, max_size=60),
       fmt=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]))
def test_valid_tables_with_hostile_text_load_every_row(texts, fmt):
    """Quotes, separators, newlines and any unicode inside the text never lose or corrupt a row."""
    if fmt == ".tsv":  # TSV has no quoting: a tab or line break inside a text cannot be written at all
        texts = [t.translate({9: " ", 10: " ", 13: " "}) for t in texts]
        texts = [t if t.strip() else "x" for t in texts]
    frame = pd.DataFrame({"text": texts, "label": ["yes", "no"] * (len(texts) // 2) + ["yes"] * (len(texts) % 2)})
    folder = Path(tempfile.mkdtemp(prefix="lmc-fuzz-"))
    path = folder / f"data{fmt}"
    try:
        if fmt == ".tsv":  # tab-separated, written as it is, no quoting or escaping
            path.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in zip(frame["text"], frame["label"])),
                            encoding="utf-8")
        elif fmt == ".jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        elif fmt == ".parquet":
            frame.to_parquet(path)
        else:  # CSV with every field quoted (pandas' writer leaves a bare "\r" unquoted, which no reader can undo)
            frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL)
        task = load_task(DataConfig(data=str(path)))
        assert sum(len(f) for f in task.splits.values()) == len(texts)
        assert sorted(pd.concat(task.splits.values())["text"]) == sorted(texts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@SETTINGS
@given(content=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES + [".md", ""]))
def test_corpus_reader_on_arbitrary_bytes(content, suffix):
    """Pre-training corpora: documents of non-empty sentences, or our one-line error."""
    from lmcompress.data.corpora import load_corpus

    path = _write(content, suffix)
    try:
        documents, _ = load_corpus(str(path))
        assert documents and all(document and all(s.strip() for s in document) for document in documents)
    except LmcError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("abZ .!?。！？”\n中")), max_size=200))
def test_sentence_splitting_keeps_every_character(text):
    from lmcompress.data.corpora import split_sentences

    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert "".join("".join(sentences).split()) == "".join(text.split())  # only whitespace at the cuts is dropped
