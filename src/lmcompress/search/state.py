"""The state of one `auto` search: its candidates, each with an explicit status, and what the search knows so far
(shared by search and summary); the executor that makes candidates is a field, so a test can script it."""

from __future__ import annotations

import enum
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import AutoConfig, DataConfig
from ..models.families import Family
from ..runs.manifest import TrainingRecord
from .donors import Donor
from .shapes import Shape, SpeedTarget, teacher_shape

LOG_FILE = "search.jsonl"


def round_step(name: str, round_: int) -> str:
    """A candidate's step of training round `round_`: the first round's steps keep their plain names."""
    return name if round_ == 1 else f"{name}-r{round_}"


class Status(enum.Enum):
    """Where a candidate is. PLANNED -> SCREENED -> TRAINED -> MET, or CLOSED (with a reason) from any of them."""

    PLANNED = "planned"  # shortlisted; nothing made yet (the static student and the teacher's int8 skip screening)
    SCREENED = "screened"  # a short distillation scored it
    TRAINED = "trained"  # made in full, scored on validation and timed; further rounds may follow
    MET = "met"  # trained, and it keeps the retention at the speed target
    CLOSED = "closed"  # no further work: failed, out of time, or a faster candidate met the target first


@dataclass
class Candidate:
    shape: Shape
    variant: str  # fp32, onnx-int8 or openvino-int8
    predicted: dict[str, Any]  # the random-weight timing (shapes.Measured.record())
    folder: Path
    status: Status = Status.PLANNED
    reason: str = ""  # why it was closed
    start_score: float | None = None  # retention on validation before any distillation (from the screen's record)
    screen_score: float | None = None
    validation_retention: float | None = None  # set once trained: the best round's
    rounds: int = 1  # training rounds made: each one after the first distils the previous round's student again
    best_round: int = 1  # the round whose model is deployed (the best on the validation rows)
    measured: dict[str, Any] | None = None  # the trained model as served, timed beside the teacher (run._retime)
    pace: float | None = None  # training examples per second of its latest distillation (screen, then each round)

    @property
    def trained(self) -> bool:
        """It has a model to hand back (a candidate closed after a failed extra round keeps its best round)."""
        return self.validation_retention is not None

    def close(self, reason: str) -> None:
        self.status, self.reason = Status.CLOSED, reason

    @property
    def name(self) -> str:
        return self.shape.name if self.variant == "fp32" else f"{self.shape.name}-{self.variant}"

    @property
    def origin(self) -> str:
        """Where its weights start: a cut of the teacher, a pre-trained donor (cut or whole), or a static table."""
        return "static" if self.shape.static else f"donor {self.shape.origin}" if self.shape.origin else "teacher cut"

    @property
    def deploy(self) -> Path:
        return self.folder / round_step("student" if self.variant == "fp32" else self.variant, self.best_round)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "shape": self.shape.name, "origin": self.origin, "variant": self.variant,
                "folder": str(self.folder),
                "predicted_speedup": self.predicted["speedup"], "predicted_latency_ms": self.predicted["latency_ms"],
                "start_score": self.start_score, "screen_score": self.screen_score,
                "validation_retention": self.validation_retention,
                "measured_speedup": (self.measured or {}).get("speedup"),
                "measured_latency_ms": (self.measured or {}).get("latency_ms"), "status": self.status.value,
                "trained": self.trained, "rounds": self.rounds, "best_round": self.best_round, "note": self.reason}


class Executor(Protocol):
    """What makes candidates (run.StageExecutor: recipe steps through the stages). A test replaces it."""

    def run(self, search: Search, c: Candidate, steps: list[str], rounds: int) -> str | None:
        """Make these steps of `c` -> None, or why they failed."""

    def made(self, search: Search, c: Candidate, step: str) -> bool:
        """Whether step `step` of `c` is already made (a re-run of the search continues where it stopped)."""

    def training(self, search: Search, c: Candidate, step: str) -> TrainingRecord | None:
        """The training record of a made step (its pace, its validation history)."""

    def round_retention(self, search: Search, c: Candidate, round_: int) -> float:
        """Round `round_`'s validation score over the teacher's."""


@dataclass
class Search:
    cfg: AutoConfig
    root: Path
    teacher_dir: Path
    data: DataConfig
    family: Family
    teacher_config: Any
    target: SpeedTarget
    deadline: float
    teacher_validation: float = 0.0
    metric: str = ""
    teacher_ms: float = 0.0
    train_rows: int = 0
    labels: list[str] | None = None  # the task's labels (None for regression)
    task: str = "classification"
    sample: tuple[list[str], list[str] | None] = ([], None)  # texts (and pairs) of the timing batch
    candidates: list[Candidate] = field(default_factory=list)
    executor: Executor | None = None
    donors: dict[str, Donor] = field(default_factory=dict)  # by label (Shape.origin)
    augment_source: str = ""  # what the augmentation texts are, for the report: --augment's, or word spans
    augment_available: int = 0  # augmentation texts outside the validation and test rows
    augment_rows: int = 0  # of those, how many each trained student sees beside the labelled rows (run.plan_augmentation)

    @property
    def rows_seen(self) -> int:
        """Rows a trained transformer student learns the teacher's outputs on: the labelled ones and the augmentation."""
        return self.train_rows + self.augment_rows

    @functools.cached_property
    def teacher_shape(self) -> Shape:
        return teacher_shape(self.family, self.teacher_config)

    def meets_target(self, c: Candidate) -> bool:
        """Trained, keeping the retention on validation, and fast enough as trained."""
        return c.trained and c.validation_retention >= self.cfg.min_retention and self.fast_as_trained(c)

    def fast_as_trained(self, c: Candidate, margin: float = 1.0) -> bool:
        """Whether `c`'s trained model, as timed beside the teacher, meets the speed target within `margin` (True
        until timed)."""
        return c.measured is None or self.target.met(c.measured["latency_ms"] / margin, c.measured["speedup"] * margin)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def threads(self) -> int:
        """The threads of every timing: --threads, else all torch uses."""
        return self.cfg.threads or torch.get_num_threads()

    def event(self, kind: str, **payload: Any) -> None:
        """One line of OUT/search.jsonl."""
        with (self.root / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": kind, "time": round(time.time(), 1), **payload}) + "\n")
