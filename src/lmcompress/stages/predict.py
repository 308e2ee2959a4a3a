"""`lmcompress predict`: a run's answers for every row of a file (or a folder of .txt files, or standard input),
written atomically as JSONL or CSV, with a progress bar in texts/s. The same readers and `--encoding` as training;
the same predictor as `lmcompress.load` and `serve`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import PredictConfig
from ..console import console
from ..data import readers
from ..data.tasks import GENERIC_PAIR_NAMES, PAIR_NAMES, TEXT_NAMES, pick_column
from ..errors import LmcError
from ..runs.files import atomic_text_file
from ..serving import Predictor, load

QUESTION_PARTNER = {"question": "context"}  # SQuAD's names: a question-answering model's pair is its context
CHUNK = 512  # texts per predictor call: the progress bar moves, and length sorting still has enough to sort


def _stdin_frame() -> pd.DataFrame:
    texts = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise LmcError("standard input holds no text (one text per line)")
    return pd.DataFrame({"text": texts})


def _folder_frame(folder: Path, encoding: str) -> pd.DataFrame:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise LmcError(f"folder {folder} holds no .txt files")
    rows = [{"file": str(p.relative_to(folder)), "text": readers.decode(p.read_bytes(), p, encoding).strip()}
            for p in files]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Inputs:
    """The rows to predict, every input column kept, and which columns hold the texts."""

    frame: pd.DataFrame
    text: str
    pair: str | None

    def column(self, name: str | None) -> list[str] | None:
        return None if name is None else self.frame[name].tolist()


def read_inputs(cfg: PredictConfig, has_pair: bool) -> Inputs:
    """The rows to predict (stdin and folders give `text`, and `file` for folders), every text checked."""
    if cfg.data == "-":
        frame = _stdin_frame()
    else:
        path = Path(cfg.data).expanduser()
        readers.check_encoding(cfg.encoding)
        if path.is_dir():
            frame = _folder_frame(path, cfg.encoding)
        else:
            frame = readers.read_table(path, cfg.encoding)
    text = pick_column(frame, cfg.text_column, TEXT_NAMES, "text", "--text-column")
    if text is None:
        strings = [c for c in frame.columns if frame[c].dtype == object and c != "file"]
        if len(strings) != 1:
            raise LmcError(f"cannot tell which column holds the text; columns are: "
                           f"{', '.join(map(str, frame.columns))} (set --text-column)")
        text = strings[0]
    pair = None
    if has_pair:
        partner = PAIR_NAMES.get(text.lower()) or QUESTION_PARTNER.get(text.lower())
        pair = pick_column(frame, cfg.text_pair_column, (partner,) if partner else GENERIC_PAIR_NAMES, "text pair",
                           "--text-pair-column")
        if pair is None:
            raise LmcError(f"{cfg.model} reads text pairs; name the second text's column with --text-pair-column")
    for column in (text, pair):
        if column is not None:
            _check_texts(frame[column], column)
    return Inputs(frame.reset_index(drop=True), text, pair)


def _check_texts(values: pd.Series, column: str) -> None:
    """One line naming the first row (1-based, as an editor counts data rows) whose text cannot be read."""
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str):
            missing = value is None or (isinstance(value, float) and value != value)  # null, NaN: no value
            raise LmcError(f"row {row}: the {column} is {'missing' if missing else type(value).__name__}, not text")
        if not value.strip():
            raise LmcError(f"row {row}: the {column} is empty")


def answer_fields(task: str, answer: Any) -> dict[str, Any]:
    """One prediction as output columns."""
    if task in ("text-classification", "regression"):
        return {"label": answer["label"], "score": answer["score"]}
    if task == "token-classification":
        return {"entities": answer}
    if task == "question-answering":
        return {"answer": answer["answer"], "score": answer["score"], "start": answer["start"], "end": answer["end"]}
    if task == "text-generation":
        return {"generated_text": answer["generated_text"]}
    return {"embedding": answer}


def predict_texts(predictor: Predictor, texts: list[str], pairs: list[str] | None) -> tuple[list[Any], float]:
    """Every text's answer, chunk by chunk behind a progress bar -> (answers, seconds)."""
    answers: list[Any] = []
    columns = [TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn()]
    started = time.perf_counter()
    with Progress(*columns, console=console(stderr=True), transient=True) as progress:
        bar = progress.add_task("predict", total=len(texts), rate="")
        for start in range(0, len(texts), CHUNK):
            answers += predictor(texts[start:start + CHUNK], pairs[start:start + CHUNK] if pairs else None)
            rate = len(answers) / (time.perf_counter() - started)
            progress.update(bar, completed=len(answers), rate=f"{rate:,.0f} texts/s")
    return answers, time.perf_counter() - started


# valid in JSON strings as they are, but Python's str.splitlines (and some editors) break lines at them
LINE_BREAKING = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line, non-ASCII text kept readable, every character that some readers take for a line break escaped."""
    return json.dumps(record, ensure_ascii=False, default=str).translate(LINE_BREAKING) + "\n"


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """JSONL or CSV by suffix, written beside the target and renamed over it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(path) as out:
        if path.suffix.lower() == ".csv":
            flat = [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
                    for r in records]
            pd.DataFrame(flat).to_csv(out, index=False)
        else:
            out.writelines(json_line(r) for r in records)


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every row of cfg.data with cfg.model; write cfg.out -> a summary (rows, texts/s, path, model)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise LmcError(f"{out} exists; pass --overwrite to replace it")
    predictor = load(cfg.model, threads=cfg.threads, batch_size=cfg.batch_size)
    inputs = read_inputs(cfg, predictor.card.has_pair)
    answers, seconds = predict_texts(predictor, inputs.column(inputs.text), inputs.column(inputs.pair))
    records = [output_record(row, answer_fields(predictor.card.task, answer))
               for row, answer in zip(inputs.frame.to_dict("records"), answers)]
    write_records(out, records)
    rate = round(len(records) / seconds, 1) if seconds else None
    return {"path": str(out), "rows": len(records), "wall_s": round(seconds, 3), "texts_per_s": rate,
            "model": predictor.card.as_dict(),
            "summary": f"predicted {len(records):,} rows in {seconds:.1f} s ({rate:,} texts/s) with {cfg.model} "
                       f"({predictor.card.runtime} {predictor.card.precision}): {out}"}


def output_record(row: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The input row, then the answer's fields; an input column named like one of them (a gold `label`) is kept as
    input_<name>."""
    return {(f"input_{k}" if k in answer else k): v for k, v in row.items()} | answer
