"""Teacher-output cache: each training example's teacher outputs computed once, then read from memory-mapped files.

Layout under `<root>/<key>/`: `logits.npy` [N, C] float32 with `filled.npy` [N] bool; for each hidden-state index l
that some student asked for, `hidden_<l>.npy` [total_tokens, H] float16 holding only real tokens (rows
`offsets[i]:offsets[i] + lengths[i]` belong to example i) with its own `filled_<l>.npy` [N]; `meta.json`. The key
hashes the teacher's weights and config and the exact training token ids, so a changed teacher or dataset never reads
stale outputs, while students with different layer maps share one cache: a layer computed for one student is there
for the next. A cache left half-filled by an interrupted run stays valid (the masks say which rows are done).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("lmcompress")


def default_root() -> Path:
    return Path(os.environ.get("LMCOMPRESS_CACHE", Path.home() / ".cache" / "lmcompress" / "teacher-outputs"))


def teacher_fingerprint(folder: Path) -> str:
    """Hash of the teacher's weights and config files."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
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


class TeacherCache:
    def __init__(self, root: Path, teacher_hash: str, input_ids: list[list[int]], num_classes: int,
                 hidden_layers: tuple[int, ...] = (), hidden_size: int = 0):
        self.lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)  # [N]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # [N]
        self.hidden_layers = tuple(hidden_layers)
        self.hidden_size = hidden_size
        spec = {"teacher": teacher_hash, "tokens": tokens_fingerprint(input_ids), "classes": num_classes, "format": 2}
        self.key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = root / self.key
        self.n, self.total = len(input_ids), int(self.lengths.sum())
        fresh = not (self.folder / "meta.json").is_file()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logits = self._array("logits.npy", (self.n, num_classes), np.float32, fresh)
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
                 int(self._complete().sum()), self.n)

    def _array(self, name: str, shape: tuple[int, ...], dtype, create: bool) -> np.memmap:
        path = self.folder / name
        if create:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            if dtype == np.bool_:
                array[:] = False  # written before the mask file is trusted: masks are created last
            return array
        return np.lib.format.open_memmap(path, mode="r+")

    def _complete(self) -> np.ndarray:
        done = np.asarray(self.filled).copy()
        for mask in self.hidden_filled.values():
            done &= np.asarray(mask)
        return done

    def has(self, idx: torch.Tensor) -> bool:
        rows = idx.cpu().numpy()
        return bool(self.filled[rows].all()) and all(bool(m[rows].all()) for m in self.hidden_filled.values())

    def read(self, idx: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """-> logits [B, C], {layer: hidden [B, seq_len, H] (zeros at padding, right-padded)}"""
        rows = idx.cpu().numpy()
        self.hits += len(rows)
        logits = torch.from_numpy(np.asarray(self.logits[rows]))
        hidden = {}
        for layer, store in self.hidden.items():
            out = torch.zeros(len(rows), seq_len, store.shape[1], dtype=torch.float32)
            for b, i in enumerate(rows):
                start, length = self.offsets[i], self.lengths[i]
                out[b, :length] = torch.from_numpy(np.asarray(store[start:start + length], dtype=np.float32))
            hidden[layer] = out
        return logits, hidden

    def write(self, idx: torch.Tensor, logits: torch.Tensor, hidden: dict[int, torch.Tensor]) -> None:
        """logits [B, C]; hidden {layer: [B, T, H]} right-padded, real tokens first. Masks are set after the data."""
        rows = idx.cpu().numpy()
        self.misses += len(rows)
        self.logits[rows] = logits.detach().float().cpu().numpy()
        for layer, states in hidden.items():
            states = states.detach().to(torch.float16).cpu().numpy()
            for b, i in enumerate(rows):
                start, length = self.offsets[i], self.lengths[i]
                self.hidden[layer][start:start + length] = states[b, :length]
            self.hidden_filled[layer][rows] = True
        self.filled[rows] = True

    def flush(self) -> None:
        for array in (self.logits, self.filled, *self.hidden.values(), *self.hidden_filled.values()):
            array.flush()

    def stats(self) -> dict[str, object]:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses,
                "cached": int(self._complete().sum()), "examples": int(self.n), "layers": list(self.hidden_layers)}
