"""Run directories: built in a hidden `.NAME.partial` sibling and renamed into place only when complete.

So a run dir is either complete (its lmcompress.json says `"complete": true`) or absent. An interrupted stage
leaves only the `.partial` sibling with its checkpoint and the options it was started with (request.json); running
the same command again continues it (a job scheduler that requeues a preempted job does exactly that), other
options are refused with the keys that differ. A stage that fails before its first checkpoint removes the sibling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
import torch.distributed as dist

from .config import DataConfig, from_dict
from .errors import LmcError
from .version import __version__

T = TypeVar("T")
log = logging.getLogger("lmcompress")

MANIFEST = "lmcompress.json"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint"
REQUEST = "request.json"  # the options an interrupted run was started with, to recognise the same command
# options that do not change what a run computes: a re-run that differs only in them still continues
NOT_PART_OF_REQUEST = ("resume", "overwrite")


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


def process_state():
    """accelerate's process-wide state. Created here first with cpu=True on machines without a GPU, because only then
    does accelerate treat a `torchrun` launch as CPU data parallelism (gloo) instead of N unrelated processes."""
    from accelerate import PartialState  # (see versions: kept off the CLI's start-up)

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in a plain run, and on rank 0 under a launcher: the only process that writes outputs."""
    return process_state().is_main_process


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


def num_processes() -> int:
    return process_state().num_processes


def on_every_process(make: Callable[[], T]) -> T:
    """`make()` on rank 0 first, then on the other ranks: for files rank 0 creates and the others open (the teacher
    caches: memory-mapped files that every process of one machine shares)."""
    made = make() if is_main_process() else None
    wait_for_everyone()
    return made if made is not None else make()


def sum_over_processes(counts: list[int]) -> list[int]:
    """Element-wise sum of per-process counters (hits, misses) across the ranks of a launch; as is in a plain run."""
    state = process_state()
    if state.num_processes == 1:
        return counts
    total = torch.tensor(counts, dtype=torch.int64, device=state.device)  # NCCL reduces only device tensors
    torch.distributed.all_reduce(total)
    return total.tolist()


def close_process_group() -> None:
    """End a launch's process group before the interpreter exits, as PyTorch asks: left to exit with it, a rank can
    abort after its work is done ("terminate called without an active exception") and fail the launch."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_all_processes(flag: bool) -> bool:
    """True where `flag` holds on every rank of a launch (`flag` itself in a plain run): for decisions that must be
    the same everywhere, such as whether a sharded teacher runs for this batch."""
    return sum_over_processes([0 if flag else 1])[0] == 0


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """A text handle on a temp file beside `path` (named for this process, created with the usual permissions),
    renamed over `path` when the block ends and removed if it fails: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename over it (never a half-written file)."""
    with atomic_text_file(path) as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


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


class RunDir:
    """The output folder of one stage."""

    def __init__(self, out: str | Path):
        self.final = Path(out).expanduser()
        self.partial = self.final.with_name(f".{self.final.name}.partial")

    @property
    def checkpoint(self) -> Path:
        return self.partial / CHECKPOINT

    def has_checkpoint(self) -> bool:
        return (self.checkpoint / "state.json").is_file()

    def check(self, overwrite: bool, resume: bool | None, request: dict[str, Any] | None = None) -> bool:
        """Validate the out dir before any work starts (so bad input never leaves anything behind) -> whether the
        run continues an interrupted one: always with --resume, never with --no-resume or --overwrite, and by
        default when the interrupted run was started with the same `request` (the stage's options)."""
        if self.final.exists() and not self.final.is_dir():
            raise LmcError(f"--out {self.final} is a file; choose a folder path")
        if self.final.is_dir() and any(self.final.iterdir()) and not overwrite:
            what = "a complete run" if is_complete(self.final) else "a non-empty folder"
            raise LmcError(f"--out {self.final} already holds {what}; pass --overwrite to replace it or pick another --out")
        if resume and not self.has_checkpoint():
            raise LmcError(f"--resume: no interrupted run to continue at {self.partial}")
        self._check_writable()
        if resume or overwrite or not self.partial.exists():
            return bool(resume)
        if resume is False:
            raise LmcError(f"an interrupted run exists at {self.partial}; pass --resume to continue it or "
                           "--overwrite to start over")
        if not self.has_checkpoint():
            return False  # interrupted before its first checkpoint: nothing to continue, start afresh
        return self._same_request(request)

    def _same_request(self, request: dict[str, Any] | None) -> bool:
        try:
            recorded = json.loads((self.partial / REQUEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if request is None or recorded is None:
            raise LmcError(f"an interrupted run exists at {self.partial}; pass --resume to continue it or "
                           "--overwrite to start over")
        differ = differing_keys(recorded, comparable(request))
        if differ:
            raise LmcError(f"an interrupted run at {self.partial} was started with other options ({'; '.join(differ[:6])}"
                           f"{'; …' if len(differ) > 6 else ''}); re-run its command to continue it, pass --overwrite "
                           "to start over, or choose another --out")
        log.info("continuing the interrupted run at %s (same options; --no-resume refuses, --overwrite starts over)",
                 self.partial)
        return True

    def _check_writable(self) -> None:
        parent = self.final.parent if str(self.final.parent) else Path(".")
        probe = parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            raise LmcError(f"cannot write to {probe}: permission denied; choose another --out")

    def begin(self, overwrite: bool, resume: bool, request: dict[str, Any] | None = None) -> None:
        """Create the partial dir (emptied unless resuming) and record `request`, so the same command continues it."""
        if is_main_process():
            if self.partial.exists() and not resume:
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True, exist_ok=True)
            if request is not None and (not resume or not (self.partial / REQUEST).is_file()):
                write_json_atomic(self.partial / REQUEST, comparable(request))
        wait_for_everyone()

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Mark complete, drop the checkpoint, and move the run into place (rank 0; the others wait)."""
        if is_main_process():
            self._commit(manifest)
        wait_for_everyone()
        return self.final

    def _commit(self, manifest: dict[str, Any]) -> None:
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        (self.partial / REQUEST).unlink(missing_ok=True)  # lmcompress.json records the options of a complete run
        manifest = dict(manifest, complete=True, finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        write_json_atomic(self.partial / MANIFEST, manifest)
        if self.final.exists():
            trash = self.final.with_name(f".{self.final.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.final, trash)
            os.replace(self.partial, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.partial, self.final)

    @contextlib.contextmanager
    def guard(self) -> Iterator[RunDir]:
        """Clean up on failure: keep the partial dir only if it holds a checkpoint to resume from."""
        try:
            yield self
        except BaseException as exc:
            if not self.has_checkpoint() and is_main_process():
                shutil.rmtree(self.partial, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, LmcError):
                raise os_error(exc) from None
            raise


def comparable(request: dict[str, Any]) -> dict[str, Any]:
    """A stage's options as JSON values, without those that do not change what it computes."""
    return json.loads(json.dumps({k: v for k, v in request.items() if k not in NOT_PART_OF_REQUEST}, default=str))


def differing_keys(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`train.epochs 3 -> 5` for every leaf that differs between two nested option dicts."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += differing_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} {old!r} -> {new!r}")
    return out


def os_error(exc: OSError) -> LmcError:
    """Disk and permission errors -> one line."""
    where = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        return LmcError(f"disk full while writing {where}; free space and re-run the same command "
                        "(it continues from the last checkpoint)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LmcError(f"permission denied writing {where}; choose another --out")
    return LmcError(f"{exc.strerror or exc} {where}".strip())


INITIAL_METRICS = "initial_metrics.json"


def initial_scores(folder: Path, resume: bool, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Validation scores before training, kept in the run so a resumed run reports the same 'before'."""
    path = folder / INITIAL_METRICS
    if resume and path.is_file():
        initial = json.loads(path.read_text(encoding="utf-8"))
    else:
        initial = evaluate()
        if is_main_process():
            write_json_atomic(path, initial)
    log.info("before training: validation %s", ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    return initial


def finish_stage(run: RunDir, write: Callable[[Path], dict[str, Any]],
                 manifest: Callable[[dict[str, Any]], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The one way a stage ends. Rank 0 writes its outputs into the partial folder and scores them
    (`write(folder)` -> the metrics.json payload), writes metrics.json, builds lmcompress.json with
    `manifest(metrics)`; every rank then waits for the commit -> metrics + `path` + `extra` ({} on other ranks)."""
    metrics: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if is_main_process():
        metrics = write(run.partial)
        write_json_atomic(run.partial / METRICS, metrics)
        record = manifest(metrics)
    final = run.commit(record)
    return metrics | {"path": str(final), **extra} if metrics else {}


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
