"""Run directories: built in a hidden `.NAME.partial` sibling and renamed into place only when complete.

So a run dir is either complete (its lmcompress.json says `"complete": true`) or absent. An interrupted stage
leaves only the `.partial` sibling with its checkpoint and the options it was started with (request.json); running
the same command again continues it (a job scheduler that requeues a preempted job does exactly that), other
options are refused with the keys that differ. A stage that fails before its first checkpoint removes the sibling.
While a process writes a run, an OS lock beside it (`.NAME.lock`) makes a second process on the same --out stop
with one line instead of writing into the same partial folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..distributed import is_main_process, wait_for_everyone
from ..errors import LmcError
from .files import hold_output, os_error, release_output, swap_into_place, write_json_atomic
from .manifest import METRICS, Manifest, is_complete, write_manifest

log = logging.getLogger("lmcompress")

CHECKPOINT = "checkpoint"


REQUEST = "request.json"  # the options an interrupted run was started with, to recognise the same command


# options that do not change what a run computes: a re-run that differs only in them still continues
NOT_PART_OF_REQUEST = ("resume", "overwrite")


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
        self._check_writable()
        if self.final.parent.is_dir():  # else begin() locks it, once it has made the parent
            self._lock()
        if resume and not self.has_checkpoint():
            raise LmcError(f"--resume: no interrupted run to continue at {self.partial}")
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
            self._lock()
            if self.partial.exists() and not resume:
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True, exist_ok=True)
            if request is not None and (not resume or not (self.partial / REQUEST).is_file()):
                write_json_atomic(self.partial / REQUEST, comparable(request))
        wait_for_everyone()

    def commit(self, manifest: Manifest | None) -> Path:
        """Mark complete, drop the checkpoint, and move the run into place (rank 0; the others wait)."""
        if is_main_process():
            self._commit(manifest)
        wait_for_everyone()
        return self.final

    def _commit(self, manifest: Manifest) -> None:
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        (self.partial / REQUEST).unlink(missing_ok=True)  # lmcompress.json records the options of a complete run
        finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_manifest(self.partial, dataclasses.replace(manifest, complete=True, finished=finished))
        swap_into_place(self.partial, self.final)
        release_output(self.final)

    def _lock(self) -> None:
        """One process writes a run: a second on the same --out stops here, before it touches the partial folder."""
        if is_main_process():
            hold_output(self.final, f"--out {self.final}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[RunDir]:
        """Clean up on failure: keep the partial dir only if it holds a checkpoint to resume from."""
        try:
            yield self
        except BaseException as exc:
            if not self.has_checkpoint() and is_main_process():
                shutil.rmtree(self.partial, ignore_errors=True)
            release_output(self.final)
            if isinstance(exc, OSError) and not isinstance(exc, LmcError):
                raise os_error(exc) from None
            raise


def comparable(request: dict[str, Any]) -> dict[str, Any]:
    """A stage's options as JSON values, without those that do not change what it computes."""
    return json.loads(json.dumps({k: v for k, v in request.items() if k not in NOT_PART_OF_REQUEST}, default=str))


def differing_keys(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`train.epochs 3 -> 5` for every leaf that differs between two nested option dicts. An option the recorded
    request lacks (added by a later version) matches while it is off (None, 0, False or empty), as it was then."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if key not in recorded and new in (None, False, 0, "", [], {}):
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += differing_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} {old!r} -> {new!r}")
    return out


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
                 manifest: Callable[[dict[str, Any]], Manifest], **extra: Any) -> dict[str, Any]:
    """The one way a stage ends. Rank 0 writes its outputs into the partial folder and scores them
    (`write(folder)` -> the metrics.json payload), writes metrics.json, builds lmcompress.json with
    `manifest(metrics)`; every rank then waits for the commit -> metrics + `path` + `extra` ({} on other ranks)."""
    metrics: dict[str, Any] = {}
    record: Manifest | None = None  # rank 0's; the other ranks only wait for the commit
    if is_main_process():
        metrics = write(run.partial)
        write_json_atomic(run.partial / METRICS, metrics)
        record = manifest(metrics)
    final = run.commit(record)
    return metrics | {"path": str(final), **extra} if metrics else {}
