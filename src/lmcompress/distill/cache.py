"""Teacher-output cache: each training example's teacher outputs computed once, then read from memory-mapped files.

Layout under `<root>/<key>/`: `logits.npy` [N, C] float32; for each cached hidden-state index l,
`hidden_<l>.npy` [total_tokens, H] float16 holding only real tokens (rows `offsets[i]:offsets[i] + lengths[i]`
belong to example i); `filled.npy` [N] bool; `meta.json`. The key hashes the teacher's weights and config, the
exact training token ids, and what is cached, so a changed teacher or dataset never reads stale outputs; a cache
left half-filled by an interrupted run stays valid (the `filled` mask says which rows are done).
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
        spec = {"teacher": teacher_hash, "tokens": tokens_fingerprint(input_ids), "classes": num_classes,
                "hidden_layers": list(self.hidden_layers), "hidden_size": hidden_size, "format": 1}
        self.key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = root / self.key
        n, total = len(input_ids), int(self.lengths.sum())
        fresh = not (self.folder / "meta.json").is_file()
        self.folder.mkdir(parents=True, exist_ok=True)
        mode = "w+" if fresh else "r+"
        self.logits = np.lib.format.open_memmap(self.folder / "logits.npy", mode=mode, dtype=np.float32,
                                                shape=(n, num_classes) if fresh else None)
        self.hidden = {layer: np.lib.format.open_memmap(self.folder / f"hidden_{layer}.npy", mode=mode,
                                                        dtype=np.float16, shape=(total, hidden_size) if fresh else None)
                       for layer in self.hidden_layers}
        self.filled = np.lib.format.open_memmap(self.folder / "filled.npy", mode=mode, dtype=np.bool_,
                                                shape=(n,) if fresh else None)
        if fresh:
            self.filled[:] = False
            (self.folder / "meta.json").write_text(json.dumps(spec, indent=2))
        self.hits = self.misses = 0
        done = int(self.filled.sum())
        log.info("teacher cache %s: %d/%d examples already cached", self.folder, done, n)

    def has(self, idx: torch.Tensor) -> bool:
        return bool(self.filled[idx.cpu().numpy()].all())

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
        """logits [B, C]; hidden {layer: [B, T, H]} right-padded, real tokens first."""
        rows = idx.cpu().numpy()
        self.misses += len(rows)
        self.logits[rows] = logits.detach().float().cpu().numpy()
        for layer, states in hidden.items():
            states = states.detach().to(torch.float16).cpu().numpy()
            for b, i in enumerate(rows):
                start, length = self.offsets[i], self.lengths[i]
                self.hidden[layer][start:start + length] = states[b, :length]
        self.filled[rows] = True

    def flush(self) -> None:
        for array in (self.logits, self.filled, *self.hidden.values()):
            array.flush()

    def stats(self) -> dict[str, object]:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses,
                "cached": int(self.filled.sum()), "examples": int(len(self.filled))}
