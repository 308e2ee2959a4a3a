"""lmcompress.json, the manifest of a run: what made it (stage, parent, resolved config), its data and task, the
stage's records and the library versions; and the questions asked of it (which kind of run, how it was made)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, from_dict
from ..errors import LmcError
from ..version import __version__

MANIFEST = "lmcompress.json"


METRICS = "metrics.json"


def versions() -> dict[str, str]:
    # accelerate, datasets and transformers load in seconds and runs.py is imported at the CLI's start: only here
    import accelerate
    import datasets
    import transformers

    return {
        "lmcompress": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
    }


def stage_manifest(stage: str, parent: str, config: dict[str, Any], task_data=None, *, data: dict | None = None,
                   task: dict | None = None, **extra: Any) -> dict[str, Any]:
    """lmcompress.json of any stage: resolved config, parent, data record (a task's split record unless `data`),
    task description, stage extras, versions."""
    if task_data is not None:
        data = task_data.split_record
        task = {"type": task_data.task, "labels": task_data.labels, "has_pair": task_data.has_pair}
    return {
        "stage": stage,
        "parent": parent,
        "config": config,
        "data": data,
        "task": task,
        **extra,
        "versions": versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


LM_OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop", "clm")


EMBEDDING_TASK = "sentence-embedding"


def is_language_model(manifest: dict[str, Any]) -> bool:
    """A pre-trained or LM-distilled run (scored by perplexity) rather than a task model."""
    return (manifest.get("task") or {}).get("type") in LM_OBJECTIVES


def is_embedding_run(manifest: dict[str, Any]) -> bool:
    """A bi-encoder (distill-embeddings) run, scored by the cosine-similarity correlation of its sentence pairs."""
    return (manifest.get("task") or {}).get("type") == EMBEDDING_TASK


def training_record(result) -> dict[str, Any]:
    """What `training.fit` did, for lmcompress.json."""
    return {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
            "examples_per_s": round(result.examples_per_s, 1), "best_epoch": result.state.best_epoch,
            "history": result.state.history}


def run_manifest(stage: str, parent: str, config: dict[str, Any], task_data, result, **extra: Any) -> dict[str, Any]:
    """lmcompress.json of a training stage: the stage manifest plus the training history."""
    return stage_manifest(stage, parent, config, task_data, **extra, train=training_record(result))


def read_run_manifest(path: Path) -> dict | None:
    """The lmcompress.json of a run dir, or None for a plain HF directory."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmcError(f"{manifest} is corrupt (not JSON); the run is incomplete — re-run the stage") from None


def quantization_method(folder: Path) -> str | None:
    """The int8 method a run was made with (`quantize`), or None for an fp32 run or a plain HF dir."""
    return ((read_run_manifest(folder) or {}).get("quantization") or {}).get("method")


def data_config_for(given: DataConfig, run: Path) -> DataConfig:
    """A copy of `given` when it names data, else the data config `run` was trained with (same rows, same split).
    Always a new object: callers adjust it (scoring drops the row cap) while the caller's own config goes on."""
    if given.data:
        return dataclasses.replace(given)
    recorded = (read_run_manifest(run) or {}).get("config", {}).get("data")
    if not recorded:
        raise LmcError(f"{run} records no training data; pass --data")
    data_cfg = from_dict(DataConfig, recorded, where=f"{run}/{MANIFEST} data")
    data_cfg.max_train_examples = given.max_train_examples
    return data_cfg


def is_complete(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError):
        return False


def made_by(manifest: dict[str, Any]) -> str:
    """How a run was made, in a few words: `finetune`, `distill layers=2`, `prune heads 12 -> 6`, `quantize onnx-int8`."""
    stage = manifest.get("stage")
    if not stage:
        return "checkpoint"
    if stage in ("distill", "distill-lm", "distill-embeddings"):
        spec = str((manifest.get("student") or {}).get("spec", ""))
        return f"distill from {Path(spec).name}" if "/" in spec else f"distill {spec}".strip()
    if stage == "quantize":
        return f"quantize {(manifest.get('quantization') or {}).get('method', '')}".strip()
    if stage == "export":
        export = manifest.get("export") or {}
        return f"export {export.get('format', 'onnx')} {export.get('precision', '')}".strip()
    if stage in ("prune", "prune-lm"):
        pruning = manifest.get("pruning") or {}
        keys = ("layers", "heads_per_layer", "kv_heads_per_layer", "ffn_per_layer", "hidden")
        changed = [f"{key.removesuffix('_per_layer').replace('_', ' ')} {value}" for key in keys
                   if isinstance(value := pruning.get(key), str) and len(set(value.split(" -> "))) == 2]
        return f"{stage} " + ", ".join(changed) if changed else stage
    return stage
