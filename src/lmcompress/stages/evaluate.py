"""`lmcompress evaluate`: score a run on a split (its kind says how: runkinds/) and write metrics.json
(schema: docs/run-directories.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EvaluateConfig
from ..backends.gguf_file import GGUF_FILE
from ..errors import LmcError
from ..runkinds import kind_of
from ..runs.files import write_json_atomic
from ..runs.manifest import METRICS, read_manifest


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score a run (or a plain HF dir with a task head) on a split; write metrics.json into --out (default: the
    run dir) -> the payload with its `path`."""
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir() or not any((folder / name).is_file() for name in ("config.json", GGUF_FILE)):
        raise LmcError(f"--model {cfg.model} is not a run directory or Hugging Face checkpoint (no config.json)")
    manifest = read_manifest(folder)
    payload = kind_of(manifest).evaluate(folder, manifest, cfg)
    out_dir = Path(cfg.out).expanduser() if cfg.out else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / METRICS, payload)
    return payload | {"path": str(out_dir / METRICS)}
