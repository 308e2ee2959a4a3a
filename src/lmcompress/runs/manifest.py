"""lmcompress.json, the manifest of a run: what made it (stage, parent, resolved config), its data and task, the
stage's records and the library versions; and the questions asked of it (which kind of run, how it was made)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, from_dict
from ..errors import LmcError
from ..version import __version__
from .files import write_json_atomic

MANIFEST = "lmcompress.json"
METRICS = "metrics.json"
LM_OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop", "clm")
EMBEDDING_TASK = "sentence-embedding"


def versions() -> dict[str, str]:
    # accelerate, datasets and transformers load in seconds and this module is imported at the CLI's start: only here
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


@dataclass
class TaskRecord:
    """What a run predicts: a task type (classification, ..., an LM objective, sentence-embedding), label names, and
    whether it reads text pairs."""

    type: str | None = None
    labels: list[str] | None = None
    has_pair: bool = False
    family: str | None = None  # language-model runs: the model family (gpt2, llama, bert, ...)

    def to_json(self) -> dict[str, Any]:
        if self.type in LM_OBJECTIVES or self.type == EMBEDDING_TASK:  # no labels: a family at most
            return {"type": self.type} | ({"family": self.family} if self.family else {})
        return {"type": self.type, "labels": self.labels, "has_pair": self.has_pair}


@dataclass
class TrainingRecord:
    """What `training.fit` did."""

    steps: int = 0
    wall_time_s: float = 0.0
    examples_per_s: float = 0.0
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_s: float | None = None  # language-model stages
    start: dict[str, float] | None = None  # distillation: the validation scores of the weights it started from
    device: str | None = None  # where it trained (None: recorded before the field existed)
    precision: str | None = None

    @classmethod
    def of(cls, result, **extra: Any) -> TrainingRecord:
        return cls(steps=result.steps, wall_time_s=round(result.wall_time_s, 1),
                   examples_per_s=round(result.examples_per_s, 1), best_epoch=result.state.best_epoch,
                   history=result.state.history, device=result.device, precision=result.precision, **extra)


@dataclass
class PruningRecord:
    """What `prune` / `prune-lm` removed: the teacher layers kept (in order), each pruned dimension as
    "before -> after", and how the units were scored."""

    kept_layers: list[int]
    shape: dict[str, str] = field(default_factory=dict)  # "heads_per_layer": "12 -> 6", "params": "4,386 -> 2,200"
    details: dict[str, Any] = field(default_factory=dict)  # importance, calibration_examples, recovery, ...

    def to_json(self) -> dict[str, Any]:
        return {"kept_layers": self.kept_layers, **self.shape, **self.details}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PruningRecord:
        shape = {k: v for k, v in raw.items() if isinstance(v, str) and " -> " in v}
        details = {k: v for k, v in raw.items() if k != "kept_layers" and k not in shape}
        return cls(list(raw.get("kept_layers") or []), shape, details)

    def changed(self) -> list[str]:
        """The dimensions that changed, in words: `heads 12 -> 6`."""
        keys = ("layers", "heads_per_layer", "kv_heads_per_layer", "ffn_per_layer", "hidden")
        return [f"{key.removesuffix('_per_layer').replace('_', ' ')} {self.shape[key]}" for key in keys
                if key in self.shape and len(set(self.shape[key].split(" -> "))) == 2]


# the records a manifest types; a stage's other records (teacher_cache, openvino, augmentation, ...) stay as they are
_TYPED = ("stage", "parent", "config", "data", "task", "train", "pruning", "student", "quantization", "export", "hub",
          "versions", "created", "complete", "finished")


@dataclass
class Manifest:
    """lmcompress.json: what made a run (stage, parent, resolved config), its data and task, what the stage did
    (training, pruning, the student it built, quantization, export, the Hub model it came from), library versions,
    and whether it is complete. Read and written only through this module and `runs.rundir`."""

    stage: str | None = None  # None: a plain transformers folder
    parent: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # the split record: files, fingerprints, row counts
    task: TaskRecord | None = None
    train: TrainingRecord | None = None
    pruning: PruningRecord | None = None
    student: dict[str, Any] | None = None  # spec, teacher_layers_copied, layer_map, layers, hidden
    quantization: dict[str, Any] | None = None  # method, ...
    export: dict[str, Any] | None = None  # format, precision, validation
    hub: dict[str, Any] | None = None  # the Hub model a run was made from: id, revision
    records: dict[str, Any] = field(default_factory=dict)  # the stage's other records, written as top-level keys
    versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    complete: bool = False
    finished: str | None = None

    # ---------------------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "parent": self.parent, "config": self.config, "data": self.data,
                               "task": self.task.to_json() if self.task else None}
        for name in ("student", "quantization", "export", "hub"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.pruning is not None:
            out["pruning"] = self.pruning.to_json()
        if self.train is not None:
            out["train"] = {k: v for k, v in dataclasses.asdict(self.train).items()
                            if v is not None or k not in ("tokens_per_s", "start", "device", "precision")}
        out |= self.records
        out |= {"versions": self.versions, "created": self.created}
        if self.complete:
            out |= {"complete": True, "finished": self.finished}
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        task, train, pruning = raw.get("task"), raw.get("train"), raw.get("pruning")
        return cls(stage=raw.get("stage"), parent=raw.get("parent"), config=raw.get("config") or {},
                   data=raw.get("data"), task=TaskRecord(**task) if isinstance(task, dict) else None,
                   train=TrainingRecord(**train) if isinstance(train, dict) else None,
                   pruning=PruningRecord.from_json(pruning) if isinstance(pruning, dict) else None,
                   student=raw.get("student"), quantization=raw.get("quantization"), export=raw.get("export"),
                   hub=raw.get("hub"), records={k: v for k, v in raw.items() if k not in _TYPED},
                   versions=raw.get("versions") or {}, created=raw.get("created"),
                   complete=raw.get("complete") is True, finished=raw.get("finished"))

    # ---------------------------------------------------------------------------------------------- questions

    @property
    def is_run(self) -> bool:
        """Made by a stage (False for a plain Hugging Face folder, a .gguf file or a zoo model)."""
        return self.stage is not None

    @property
    def task_type(self) -> str | None:
        return self.task.type if self.task else None

    @property
    def is_language_model(self) -> bool:
        """A pre-trained or LM-distilled run (scored by perplexity) rather than a task model."""
        return self.task_type in LM_OBJECTIVES

    @property
    def is_embedding_run(self) -> bool:
        """A bi-encoder (distill-embeddings) run, scored by the cosine-similarity correlation of its sentence pairs."""
        return self.task_type == EMBEDDING_TASK

    @property
    def quantization_method(self) -> str | None:
        return (self.quantization or {}).get("method")

    @property
    def data_options(self) -> dict[str, Any]:
        """The data config the run was made with, as recorded (empty when it records none)."""
        return self.config.get("data") or {}

    @property
    def test_fingerprint(self) -> str | None:
        return (self.data or {}).get("test_fingerprint")

    def layers_kept_from(self, teacher_dir: Path) -> list[int] | None:
        """The layers of `teacher_dir` this run's layers are copies of, in order: a prune run keeps whole layers of
        its parent, a distill run records what its student copied. None when the run was not cut from it."""
        if not self.parent or Path(self.parent).resolve() != teacher_dir.resolve():
            return None
        if self.stage == "prune" and self.pruning:
            return self.pruning.kept_layers
        if self.stage == "distill":
            return (self.student or {}).get("teacher_layers_copied")
        return None

    def made_by(self) -> str:
        """How a run was made, in a few words: `finetune`, `distill layers=2`, `prune heads 12 -> 6`,
        `quantize onnx-int8`."""
        stage = self.stage
        if not stage:
            return "checkpoint"
        if stage in ("distill", "distill-lm", "distill-embeddings"):
            spec = str((self.student or {}).get("spec", ""))
            return f"distill from {Path(spec).name}" if "/" in spec else f"distill {spec}".strip()
        if stage == "quantize":
            return f"quantize {self.quantization_method or ''}".strip()
        if stage == "export":
            export = self.export or {}
            return f"export {export.get('format', 'onnx')} {export.get('precision', '')}".strip()
        if stage in ("prune", "prune-lm"):
            changed = self.pruning.changed() if self.pruning else []
            return f"{stage} " + ", ".join(changed) if changed else stage
        return stage


def stage_manifest(stage: str, parent: str, config: dict[str, Any], task_data=None, *, data: dict | None = None,
                   task: TaskRecord | None = None, train: TrainingRecord | None = None,
                   pruning: PruningRecord | None = None, student: dict | None = None, quantization: dict | None = None,
                   export: dict | None = None, hub: dict | None = None, **records: Any) -> Manifest:
    """lmcompress.json of any stage: resolved config, parent, data record (a task's split record unless `data`),
    task, the stage's records, versions."""
    if task_data is not None:
        data = task_data.split_record
        task = TaskRecord(task_data.task, task_data.labels, task_data.has_pair)
    return Manifest(stage=stage, parent=parent, config=config, data=data, task=task, train=train, pruning=pruning,
                    student=student, quantization=quantization, export=export, hub=hub, records=records,
                    versions=versions(), created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def run_manifest(stage: str, parent: str, config: dict[str, Any], task_data, result,
                 start: dict[str, float] | None = None, **records: Any) -> Manifest:
    """lmcompress.json of a training stage: the stage manifest plus the training history (and `start`, the
    validation scores before training, where the stage measured them)."""
    return stage_manifest(stage, parent, config, task_data, **records, train=TrainingRecord.of(result, start=start))


def read_manifest(path: Path) -> Manifest:
    """The lmcompress.json of a run dir; an empty manifest (stage None) for a plain Hugging Face folder."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return Manifest()
    try:
        return Manifest.from_json(json.loads(manifest.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError):
        raise LmcError(f"{manifest} is corrupt (not a run manifest); the run is incomplete — re-run the stage") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(folder / MANIFEST, manifest.to_json())


def data_config_for(given: DataConfig, run: Path) -> DataConfig:
    """A copy of `given` when it names data, else the data config `run` was trained with (same rows, same split).
    Always a new object: callers adjust it (scoring drops the row cap) while the caller's own config goes on."""
    if given.data:
        return dataclasses.replace(given)
    recorded = read_manifest(run).data_options
    if not recorded:
        raise LmcError(f"{run} records no training data; pass --data")
    data_cfg = from_dict(DataConfig, recorded, where=f"{run}/{MANIFEST} data")
    data_cfg.max_train_examples = given.max_train_examples
    return data_cfg


def is_complete(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False
