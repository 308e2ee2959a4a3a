"""Teacher-output cache: each training example's teacher outputs computed once, then read from memory-mapped files.

Layout under `<root>/<key>/`: `logits.npy` [N, C] float32 (per-token tasks, NER and QA: [total_tokens, C], packed
like the hidden states) with `filled.npy` [N] bool; for each hidden-state index l that some student asked for,
`hidden_<l>.npy` [total_tokens, H] float16 holding only real tokens (rows `offsets[i]:offsets[i] + lengths[i]` belong
to example i) with its own `filled_<l>.npy` [N]; `meta.json`. The key hashes the teacher's weights and config, the
precision it computes in and the exact training token ids, so a changed teacher, precision or dataset never reads
stale outputs, while students with different layer maps share one cache: a layer computed for one student is there
for the next. A cache left half-filled by an interrupted run stays valid (the masks say which rows are done).
Under a launcher rank 0 creates the files and every rank maps them: each fills the rows of its own shard, and later
epochs read rows any rank filled (one machine: the processes share the page cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path

import numpy as np
import torch

from ..distributed import is_main_process, sum_over_processes
from ..runs.files import hold_output, release_output

log = logging.getLogger("lmcompress")


def default_root() -> Path:
    return Path(os.environ.get("LMCOMPRESS_CACHE", Path.home() / ".cache" / "lmcompress" / "teacher-outputs"))


def teacher_cache_root(cache_dir: str | None) -> Path:
    """Where every distill stage keeps teacher outputs: CACHE_DIR/teacher-outputs for --cache-dir CACHE_DIR (the
    root that also holds tokenised corpora), else ~/.cache/lmcompress/teacher-outputs ($LMCOMPRESS_CACHE)."""
    return Path(cache_dir).expanduser() / "teacher-outputs" if cache_dir else default_root()


def teacher_fingerprint(folder: Path) -> str:
    """Hash of the teacher's weights and config files (or of a single-file checkpoint such as a .gguf)."""
    digest = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def tokens_fingerprint(input_ids: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for ids in input_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:20]


def hold_cache(cache: object, folder: Path) -> None:
    """One process fills a cache entry (its ranks share it): a second stops with one line instead of truncating the
    files the first writes. The lock goes with the cache object, or with the process."""
    if is_main_process():
        hold_output(folder, f"the teacher cache {folder}")
        weakref.finalize(cache, release_output, folder)


class TeacherCache:
    def __init__(self, root: Path, teacher_hash: str, input_ids: list[list[int]], num_classes: int,
                 hidden_layers: tuple[int, ...] = (), hidden_size: int = 0, per_token: bool = False,
                 precision: str = "fp32"):
        self.lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)  # [N]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # [N]
        self.hidden_layers = tuple(hidden_layers)
        self.hidden_size = hidden_size
        self.per_token = per_token  # logits per token [T, C] (token classification, QA spans), not per example
        # bf16 and fp32 teachers differ in the third digit: an fp32 run must never read a bf16 teacher's outputs
        spec = {"teacher": teacher_hash, "tokens": tokens_fingerprint(input_ids), "classes": num_classes, "format": 2,
                "precision": precision}
        if per_token:
            spec["per_token"] = True
        self.key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = root / self.key
        self.n, self.total = len(input_ids), int(self.lengths.sum())
        hold_cache(self, self.folder)
        fresh = not (self.folder / "meta.json").is_file()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logits = self._array("logits.npy", (self.total if per_token else self.n, num_classes), np.float32, fresh)
        self.filled = self._array("filled.npy", (self.n,), np.bool_, fresh)
        self.hidden: dict[int, np.memmap] = {}
        self.hidden_filled: dict[int, np.memmap] = {}
        for layer in self.hidden_layers:  # a layer no earlier student asked for starts empty
            new_layer = fresh or not (self.folder / f"filled_{layer}.npy").is_file()
            self.hidden[layer] = self._array(f"hidden_{layer}.npy", (self.total, hidden_size), np.float16, new_layer)
            self.hidden_filled[layer] = self._array(f"filled_{layer}.npy", (self.n,), np.bool_, new_layer)
        if fresh:
            (self.folder / "meta.json").write_text(json.dumps(spec, indent=2))
        self.hits = self.misses = 0
        log.info("teacher cache %s: %d/%d examples already cached with everything this student needs", self.folder,
                 int(self.complete().sum()), self.n)

    def _array(self, name: str, shape: tuple[int, ...], dtype, create: bool) -> np.memmap:
        path = self.folder / name
        if create:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            if dtype == np.bool_:
                array[:] = False  # written before the mask file is trusted: masks are created last
            return array
        return np.lib.format.open_memmap(path, mode="r+")

    def complete(self) -> np.ndarray:
        """[N] bool: rows whose logits and every requested hidden state are cached."""
        done = np.asarray(self.filled).copy()
        for mask in self.hidden_filled.values():
            done &= np.asarray(mask)
        return done

    def has(self, idx: torch.Tensor) -> bool:
        rows = idx.cpu().numpy()
        return bool(self.filled[rows].all()) and all(bool(m[rows].all()) for m in self.hidden_filled.values())

    def _gather(self, store: np.memmap, rows: np.ndarray, seq_len: int) -> torch.Tensor:
        """Token-packed rows -> [B, seq_len, D] float32, zeros at padding (right-padded)."""
        out = torch.zeros(len(rows), seq_len, store.shape[1], dtype=torch.float32)
        for b, i in enumerate(rows):
            start, length = self.offsets[i], self.lengths[i]
            out[b, :length] = torch.from_numpy(np.asarray(store[start:start + length], dtype=np.float32))
        return out

    def _scatter(self, store: np.memmap, rows: np.ndarray, values: torch.Tensor) -> None:
        """[B, T, D] right-padded, real tokens first -> the token-packed rows, in the store's dtype."""
        values = values.detach().cpu().numpy().astype(store.dtype)
        for b, i in enumerate(rows):
            start, length = self.offsets[i], self.lengths[i]
            store[start:start + length] = values[b, :length]

    def read(self, idx: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """-> logits [B, C] (per token: [B, seq_len, C]), {layer: hidden [B, seq_len, H]}; zeros at padding"""
        rows = idx.cpu().numpy()
        self.hits += len(rows)
        logits = self._gather(self.logits, rows, seq_len) if self.per_token \
            else torch.from_numpy(np.asarray(self.logits[rows]))
        return logits, {layer: self._gather(store, rows, seq_len) for layer, store in self.hidden.items()}

    def write(self, idx: torch.Tensor, logits: torch.Tensor, hidden: dict[int, torch.Tensor]) -> None:
        """logits [B, C] (per token: [B, T, C]); hidden {layer: [B, T, H]}; right-padded, real tokens first. Masks
        are set after the data."""
        rows = idx.cpu().numpy()
        self.misses += len(rows)
        if self.per_token:
            self._scatter(self.logits, rows, logits.float())
        else:
            self.logits[rows] = logits.detach().float().cpu().numpy()
        for layer, states in hidden.items():
            self._scatter(self.hidden[layer], rows, states)
            self.hidden_filled[layer][rows] = True
        self.filled[rows] = True

    def flush(self) -> None:
        for array in (self.logits, self.filled, *self.hidden.values(), *self.hidden_filled.values()):
            array.flush()

    def stats(self) -> dict[str, object]:
        """Counts over every process of a launch (each rank reads and fills the shared files for its own rows); every
        rank must call it."""
        hits, misses = sum_over_processes([self.hits, self.misses])
        return {"folder": str(self.folder), "hits": hits, "misses": misses,
                "cached": int(self.complete().sum()), "examples": int(self.n), "layers": list(self.hidden_layers)}


class TopKCache:
    """The teacher's top-k vocabulary logits of each causal-LM block: `values.npy` [N, T, k] float16 and `ids.npy`
    [N, T, k] int32 under `<root>/topk/<key>/`, with `filled.npy` [N]. The key hashes the teacher, the precision it
    computes in, the exact token ids of every block and k, so a changed teacher, precision, corpus, tokenizer or k never
    reads stale values."""

    def __init__(self, root: Path, teacher_hash: str, examples_hash: str, n: int, seq_len: int, k: int,
                 precision: str = "fp32"):
        key = hashlib.sha256(f"{teacher_hash}|{examples_hash}|{seq_len}|{k}|{precision}".encode()).hexdigest()[:24]
        self.folder = root / "topk" / key
        hold_cache(self, self.folder)
        fresh = not (self.folder / "filled.npy").is_file()
        self.folder.mkdir(parents=True, exist_ok=True)
        mode = "w+" if fresh else "r+"
        self.values = np.lib.format.open_memmap(self.folder / "values.npy", mode=mode, dtype=np.float16,
                                                shape=(n, seq_len, k) if fresh else None)
        self.ids = np.lib.format.open_memmap(self.folder / "ids.npy", mode=mode, dtype=np.int32,
                                             shape=(n, seq_len, k) if fresh else None)
        if fresh:  # the mask is created last, so a crash before it leaves a cache that is rebuilt, never trusted
            filled = np.lib.format.open_memmap(self.folder / "filled.tmp.npy", mode="w+", dtype=np.bool_, shape=(n,))
            filled[:] = False
            filled.flush()
            del filled
            os.replace(self.folder / "filled.tmp.npy", self.folder / "filled.npy")
            (self.folder / "meta.json").write_text(json.dumps(
                {"teacher": teacher_hash, "examples": examples_hash, "n": n, "seq_len": seq_len, "k": k,
                 "precision": precision}, indent=2))
        self.filled = np.lib.format.open_memmap(self.folder / "filled.npy", mode="r+")
        if self.values.shape != (n, seq_len, k):
            raise ValueError(f"teacher cache {self.folder} has shape {self.values.shape}, expected {(n, seq_len, k)}")
        self.k, self.hits, self.misses = k, 0, 0
        log.info("teacher top-%d cache %s: %d/%d blocks already cached", k, self.folder, int(self.filled.sum()), n)

    def has(self, idx: torch.Tensor) -> bool:
        return bool(self.filled[idx.cpu().numpy()].all())

    def read(self, idx: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> values [B, seq_len, k] float32, ids [B, seq_len, k] int64"""
        rows = np.sort(idx.cpu().numpy())
        order = np.argsort(np.argsort(idx.cpu().numpy()))  # memmaps read fastest in row order; restore batch order
        self.hits += len(rows)
        values = torch.from_numpy(np.asarray(self.values[rows, :seq_len], dtype=np.float32))[order]
        ids = torch.from_numpy(np.asarray(self.ids[rows, :seq_len], dtype=np.int64))[order]
        return values, ids

    def write(self, idx: torch.Tensor, values: torch.Tensor, ids: torch.Tensor) -> None:
        """values, ids [B, T, k] with T <= seq_len (a short last batch is padded by the collator)."""
        rows = idx.cpu().numpy()
        self.misses += len(rows)
        t = values.shape[1]
        self.values[rows, :t] = values.detach().to(torch.float16).cpu().numpy()
        self.ids[rows, :t] = ids.detach().to(torch.int32).cpu().numpy()
        self.filled[rows] = True  # after the data

    def flush(self) -> None:
        for array in (self.values, self.ids, self.filled):
            array.flush()

    def stats(self) -> dict[str, object]:
        """Counts over every process of a launch; every rank must call it."""
        hits, misses = sum_over_processes([self.hits, self.misses])
        return {"folder": str(self.folder), "k": self.k, "hits": hits, "misses": misses,
                "cached": int(self.filled.sum()), "blocks": int(len(self.filled))}
