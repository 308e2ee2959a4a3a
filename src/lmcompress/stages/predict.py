"""`lmcompress predict`: a run's answers for every row of a file (or a folder of .txt files, or standard input),
written atomically as JSONL or CSV, with a progress bar in texts/s. The same readers and `--encoding` as training;
the same predictor as `lmcompress.load` and `serve`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import PredictConfig
from ..console import console
from ..data import readers
from ..data.tasks import GENERIC_PAIR_NAMES, PAIR_NAMES, TEXT_NAMES, pick_column
from ..errors import LmcError
from ..serving import Predictor, load

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


def read_inputs(cfg: PredictConfig, has_pair: bool) -> pd.DataFrame:
    """The rows to predict -> a frame with `text` (and `text_pair`, `file` where they apply), every text checked."""
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
    columns = {text: "text"}
    if has_pair:
        partner = PAIR_NAMES.get(text.lower())
        pair = pick_column(frame, cfg.text_pair_column, (partner,) if partner else GENERIC_PAIR_NAMES, "text pair",
                       "--text-pair-column")
        if pair is None:
            raise LmcError(f"{cfg.model} reads text pairs; name the second text's column with --text-pair-column")
        columns[pair] = "text_pair"
    kept = frame[list(columns) + (["file"] if "file" in frame.columns else [])].rename(columns=columns)
    for column in columns.values():
        _check_texts(kept[column], column)
    return kept.reset_index(drop=True)


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
    if task == "text-generation":
        return {"generated_text": answer["generated_text"]}
    return {"embedding": answer}


def predict_frame(predictor: Predictor, frame: pd.DataFrame) -> tuple[list[Any], float]:
    """Every row's answer, chunk by chunk behind a progress bar -> (answers, seconds)."""
    texts, pairs = frame["text"].tolist(), frame["text_pair"].tolist() if "text_pair" in frame else None
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


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """JSONL or CSV by suffix, written beside the target and renamed over it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            if path.suffix.lower() == ".csv":
                flat = [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
                        for r in records]
                pd.DataFrame(flat).to_csv(out, index=False)
            else:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every row of cfg.data with cfg.model; write cfg.out -> a summary (rows, texts/s, path, model)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise LmcError(f"{out} exists; pass --overwrite to replace it")
    predictor = load(cfg.model, threads=cfg.threads, batch_size=cfg.batch_size)
    frame = read_inputs(cfg, predictor.card.has_pair)
    answers, seconds = predict_frame(predictor, frame)
    records = [row | answer_fields(predictor.card.task, answer)
               for row, answer in zip(frame.to_dict("records"), answers)]
    write_records(out, records)
    summary = {"path": str(out), "rows": len(records), "wall_s": round(seconds, 3),
               "texts_per_s": round(len(records) / seconds, 1) if seconds else None, "model": predictor.card.as_dict()}
    console().print(f"predicted {len(records):,} rows in {seconds:.1f} s ({summary['texts_per_s']:,} texts/s) with "
                    f"{cfg.model} ({predictor.card.runtime} {predictor.card.precision}): {out}")
    return summary
