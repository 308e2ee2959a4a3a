"""File formats -> pandas DataFrames.

Every reader returns a DataFrame (or, for a folder with train/validation/test files, one per split) and turns
every way a file can be wrong into one `LmcError` line: missing, empty, not in the expected encoding, not parseable.

Text is UTF-8 unless `encoding` names another codec (latin-1, cp1252, ...) or is "auto": then each file's encoding is
detected from its bytes (charset-normalizer), which is what a folder of e-mails or news articles written by different
programs needs.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import io
import json
import re
from pathlib import Path

import charset_normalizer
import pandas as pd
from pandas.io.common import get_handle

from ..errors import LmcError

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = {".bz2", ".gz", ".xz", ".zst", ".zip"}
SPLIT_FILE_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


def file_format(path: Path) -> str | None:
    """'csv' | 'tsv' | 'jsonl' | 'parquet' | 'text' | None, looking through a compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return TABLE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_encoding(encoding: str) -> None:
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise LmcError(f"--encoding {encoding} is not a known text encoding (utf-8, latin-1, cp1252, ... or "
                           "auto)") from None


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


def _shown(encoding: str) -> str:
    return "UTF-8" if _is_utf8(encoding) else encoding


def decode(raw: bytes, path: Path, encoding: str = "utf-8") -> str:
    """A file's bytes as text in `encoding` ("auto": detected per file); a UTF-8 byte-order mark is dropped."""
    if encoding == "auto":
        try:
            return raw.decode("utf-8-sig")  # most files are: no need to guess
        except UnicodeDecodeError:
            return _detected(raw, path)
    try:
        return raw.decode("utf-8-sig" if _is_utf8(encoding) else encoding)
    except UnicodeDecodeError as exc:
        raise NotEncodedError(path, encoding, exc.start) from None


def _detected(raw: bytes, path: Path) -> str:
    """Text in the encoding charset-normalizer finds likeliest. A short text often fits several code pages equally
    well (cp1250 reads "crème" as "crčme" as happily as cp1252 reads it right): ties go to cp1252, the commonest
    8-bit encoding of English and Western European text (a superset of Latin-1's letters)."""
    matches = list(charset_normalizer.from_bytes(raw))
    if not matches:
        raise LmcError(f"{path}: cannot detect its text encoding (binary data?)")
    least_chaos = min(m.chaos for m in matches)
    tied = [m for m in matches if m.chaos == least_chaos]
    return str(next((m for m in tied if m.encoding == "cp1252"), tied[0]))


class NotEncodedError(LmcError):
    """A file that is not text in the expected encoding (folders count these before they report)."""

    def __init__(self, path: Path, encoding: str, offset: int):
        self.path, self.encoding = path, encoding
        super().__init__(f"{path} is not {_shown(encoding)} text (bad byte at offset {offset}); pass --encoding auto to "
                         "detect each file's encoding, or name it (--encoding latin-1)")


def _read_text(path: Path, encoding: str) -> str:
    """A file's text, decompressed (.bz2, .gz, .xz, .zip, .zst) and decoded."""
    with get_handle(path, "rb", compression="infer", is_text=False) as handles:
        return decode(handles.handle.read(), path, encoding)


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Read one file in any supported format."""
    if not path.exists():
        raise LmcError(f"data file {path} does not exist")
    if path.is_dir():
        raise LmcError(f"{path} is a folder; expected a file")
    fmt = file_format(path)
    if fmt is None:
        raise LmcError(
            f"cannot tell the format of {path.name}; use a .csv, .tsv, .jsonl, .parquet or .txt file "
            "(optionally .bz2/.gz compressed) or a folder"
        )
    if path.stat().st_size == 0:
        raise LmcError(f"data file {path} is empty")
    try:
        # every cell read as the exact string in the file: a review "00" stays "00" and a text "NaN" or "None"
        # stays text (pandas would turn them into 0 and missing); labels become numbers later, in tasks
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "text":
            frame = pd.DataFrame({"text": read_text_lines(path, encoding)})
        else:
            text = io.StringIO(_read_text(path, encoding))
            if fmt == "csv":
                frame = pd.read_csv(text, dtype=str, keep_default_na=False)
            elif fmt == "tsv":
                frame = pd.read_csv(text, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
            else:
                frame = pd.read_json(text, lines=True, dtype=False, convert_dates=False)
    except LmcError:
        raise
    except pd.errors.EmptyDataError:
        raise LmcError(f"data file {path} has no rows") from None
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise LmcError(f"cannot read {path} as {fmt.upper()}: {_first_line(exc)}") from None
    except Exception as exc:  # pyarrow and compression libraries raise their own types
        raise LmcError(f"cannot read {path} as {fmt.upper()}: {_first_line(exc)}") from None
    if len(frame) == 0:
        raise LmcError(f"data file {path} has no rows")
    return frame


def json_lines(lines, where: str, required: tuple[str, ...], kind: str):
    """(line number, object) for each non-empty line, which must be a JSON object holding the `required` keys."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LmcError(f"{where}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or any(key not in record for key in required):
            raise LmcError(f"{where}:{number}: a {kind} record needs {', '.join(repr(k) for k in required)}")
        yield number, record


def read_text_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Plain text: one example per non-empty line."""
    try:
        text = _read_text(path, encoding)
    except OSError as exc:
        raise LmcError(f"cannot read {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise LmcError(f"data file {path} has no non-empty lines")
    return lines


def read_label_folders(folder: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A folder with one sub-folder per label, each holding .txt files (one example per file). Files not in
    `encoding` are counted over the whole folder before the one error names the first few."""
    rows: list[dict[str, str]] = []
    wrong: list[Path] = []
    label_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(label_dir.name, txt) for label_dir in label_dirs for txt in sorted(label_dir.glob("*.txt"))]
    for label, txt in files:
        try:
            text = decode(txt.read_bytes(), txt, encoding).strip()
        except NotEncodedError:
            wrong.append(txt)
            continue
        if text:
            rows.append({"text": text, "label": label})
    if wrong:
        names = ", ".join(str(p.relative_to(folder)) for p in wrong[:3]) + (", ..." if len(wrong) > 3 else "")
        raise LmcError(f"{len(wrong)} of {len(files)} files in {folder} are not {_shown(encoding)} text ({names}); pass "
                       "--encoding auto to detect each file's encoding, or name it (--encoding latin-1)")
    if not rows:
        raise LmcError(f"folder {folder} has no .txt files in label sub-folders")
    return pd.DataFrame(rows)


def find_split_files(folder: Path, accept=lambda path: file_format(path) is not None,
                     loose: bool = False) -> dict[str, Path]:
    """train/validation/test files inside a folder (any supported format, or what `accept` takes), by conventional
    names; `loose` also takes a name's part before '-' or '_' (SQuAD's train-v1.1.json, dev-v1.1.json)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not accept(path):
            continue
        stem = path.name.split(".")[0].lower()
        if loose:
            stem = re.split(r"[-_]", stem)[0]
        for split, names in SPLIT_FILE_NAMES.items():
            if stem in names:
                if split in found:
                    raise LmcError(f"folder {folder} has two {split} files: {found[split].name} and {path.name}")
                found[split] = path
    return found


def read_path(path: Path, encoding: str = "utf-8") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A file -> one frame; a folder -> per-split frames (train/validation/test files) or a label-folder frame."""
    check_encoding(encoding)
    if not path.exists():
        raise LmcError(f"data path {path} does not exist")
    if path.is_file():
        return read_table(path, encoding)
    split_files = find_split_files(path)
    if split_files:
        if "train" not in split_files:
            raise LmcError(f"folder {path} has {', '.join(split_files)} files but no train file")
        return {split: read_table(p, encoding) for split, p in split_files.items()}
    return read_label_folders(path, encoding)


# ------------------------------------------------------------------------------------------------------------
# zoo tasks (DATA.md): read from the installed package files
# ------------------------------------------------------------------------------------------------------------


def read_rotten_tomatoes(path: Path) -> pd.DataFrame:
    """Pang & Lee reviews: keep fresh/rotten, drop plot summaries (not reviews)."""
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return frame[["text", "category"]].rename(columns={"category": "label"}).reset_index(drop=True)


def read_debates(path: Path) -> pd.DataFrame:
    """The 2016 debates: each statement labelled with its speaker's party (moderators as their own class)."""
    frame = pd.read_csv(path, compression="gzip")
    return frame[["statement", "party"]].rename(columns={"statement": "text", "party": "label"}).dropna()


def read_fortunes(folder: Path) -> pd.DataFrame:
    """Debian fortunes: one topic file per label, entries separated by a line holding only '%'."""
    rows: list[dict[str, str]] = []
    for topic in sorted(folder.iterdir()):
        if topic.is_symlink() or not topic.is_file() or topic.suffix in (".dat", ".u8") or topic.name.startswith("."):
            continue
        text = topic.read_bytes().decode("utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            entry = entry.strip().strip("%").strip()
            if entry:
                rows.append({"text": entry, "label": topic.name})
    if not rows:
        raise LmcError(f"no fortune files found under {folder}")
    return pd.DataFrame(rows)
