"""`distill_model`: a student trained on a teacher's outputs, in memory.

The library call under `lmcompress distill`, prune's recovery and the benchmarks: models and tokenised rows in, the
trained student out. Its only files are the training loop's (checkpoints and loss logs, read back on resume) in
`folder`, or in a temporary folder it removes when none is given, and the teacher cache it is handed. Run
directories, manifests and where the cache lives are the stage's business (stages/distill.py). The teacher is left
as the losses needed it (eager attention when attention maps are compared).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import transformers
from torch import nn

from ..config import DistillLossConfig, TrainConfig, distill_training
from ..distributed import is_main_process, num_processes
from ..errors import LmcError
from ..surgery.student import layer_count, model_width
from ..training import BatchOrder, FitResult, fit
from .cache import TeacherCache
from .components import (TEACHER_PREFIX, DistillModule, Needs, TeacherOutputs, fill_teacher_cache, intermediate_needs,
                         parse_layer_map, projection_count)
from .task_loss import make_task_loss_fn

log = logging.getLogger("lmcompress")
INTERMEDIATE_STAGE = "intermediate-stage"  # TinyBERT stage 1's checkpoints and result, inside `folder`


@dataclass
class DistillSettings:
    """How to distil: the losses, the optimisation, the task's head, and TinyBERT's optional first stage."""

    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    train: TrainConfig = field(default_factory=distill_training)
    task: str = "classification"  # classification, regression, token-classification or question-answering
    teacher_precision: str = "auto"  # the teacher's forward pass: auto (bf16 where the CPU has bf16 kernels), fp32, bf16
    intermediate_epochs: float = 0.0  # > 0: TinyBERT two-stage (intermediate layers first, then the prediction layer)


@dataclass
class DistillResult:
    student: nn.Module  # trained (the best evaluated weights, or the last), on the CPU
    fit: FitResult
    layer_map: list[int]  # the teacher layer (1-based hidden-state index) each student layer learnt from
    needs: Needs  # which intermediate outputs the losses read


@dataclass
class Evaluation:
    """Scores the student each epoch (`score(student) -> {metric: value}`); `monitor` picks the weights kept."""

    score: Callable[[nn.Module], dict[str, float]]
    monitor: str
    higher_is_better: bool = True


def distill_model(teacher: nn.Module, student: nn.Module, rows, collate, settings: DistillSettings | None = None, *,
                  copied: list[int] | None = None, layer_map: list[int] | None = None,
                  evaluation: Evaluation | None = None, cache: TeacherCache | None = None,
                  teacher_ids: list[list[int]] | None = None, folder: Path | None = None, resume: bool = False,
                  batch_order: BatchOrder | None = None, description: str = "distill") -> DistillResult:
    """Train `student` (in place) on `teacher`'s outputs over `rows` (a tokenised `datasets.Dataset` with labels,
    batched by `collate`).

    copied: the teacher layers the student's layers are copies of (a derived or pruned student), so the hidden-state
    loss pairs each with its source; layer_map: that pairing given outright. evaluation: without it no epoch is
    scored and the last weights are kept. cache: the teacher's outputs, filled here before training (teacher_ids:
    the teacher's own token ids per row when its vocabulary differs from the student's). folder/resume: where the
    loop checkpoints, and whether to continue from its checkpoint. batch_order: replaces the shuffled order.
    """
    settings = settings or DistillSettings()
    _check_folder(folder, resume)
    if layer_map is None:
        layer_map = parse_layer_map(settings.loss.layer_map, layer_count(student.config),
                                    layer_count(teacher.config), copied)
    needs = intermediate_needs(student, teacher, settings.loss, layer_map)
    if settings.intermediate_epochs > 0 and not (needs.hidden or needs.attentions or needs.qkv):
        raise LmcError("intermediate_epochs (TinyBERT two-stage) trains the intermediate layers first: give a hidden, "
                       "attention, embedding, MiniLM or pooled loss weight")
    if "idx" not in rows.column_names:  # the cache and the paired collator find a row's teacher outputs by it
        rows = rows.add_column("idx", list(range(len(rows))))
    transformers.set_seed(settings.train.seed)  # projections start the same whatever ran before in this process
    module = DistillModule(student, model_width(student.config), model_width(teacher.config),
                           projection_count(settings.loss, layer_map))
    phases = _Phases(settings, module, teacher, rows, collate, cache, needs, layer_map, evaluation, batch_order,
                     description)
    with _work_folder(folder) as work:
        try:
            if cache is not None:  # the teacher's pass, once, before training: every epoch then reads the cache
                outputs = TeacherOutputs(teacher, cache, needs, settings.teacher_precision)
                fill_teacher_cache(cache, rows, teacher_ids or _teacher_tokens(rows), collate, outputs,
                                   settings.train.eval_batch_size)
            result = phases.run(work, resume)
        finally:
            if cache is not None:
                cache.flush()
    trained = module.student.cpu()
    if needs.attentions:  # eager attention was for reading the maps; inference keeps sdpa
        trained.set_attn_implementation("sdpa")
    return DistillResult(trained, result, layer_map, needs)


def _teacher_tokens(rows) -> list[list[int]]:
    """The teacher's token ids per row: its own columns where its vocabulary differs (PairedCollator's rows)."""
    own = TEACHER_PREFIX + "input_ids"
    return rows[own if own in rows.column_names else "input_ids"]


def _check_folder(folder: Path | None, resume: bool) -> None:
    if folder is None:
        if resume:
            raise ValueError("resume needs the folder holding the checkpoint")
        if num_processes() > 1:  # each rank would make its own temporary folder; rank 0 alone writes checkpoints
            raise ValueError("distill_model under several processes needs a folder shared by every rank")
    elif not resume and (Path(folder) / "checkpoint").exists():
        raise ValueError(f"{folder} holds a checkpoint of an earlier call: pass resume=True or an empty folder")


@contextlib.contextmanager
def _work_folder(folder: Path | None) -> Iterator[Path]:
    if folder is not None:
        yield Path(folder)
        return
    with tempfile.TemporaryDirectory(prefix="lmcompress-distill-") as temporary:
        yield Path(temporary)


@dataclass
class _Phases:
    """One training run, or TinyBERT's two (intermediate layers first, then the prediction layer)."""

    settings: DistillSettings
    module: DistillModule
    teacher: Any
    rows: Any
    collate: Any
    cache: TeacherCache | None
    needs: Needs
    layer_map: list[int]
    evaluation: Evaluation | None
    batch_order: BatchOrder | None
    description: str

    def run(self, folder: Path, resume: bool) -> FitResult:
        settings = self.settings
        if settings.intermediate_epochs <= 0:
            return self._phase("all", settings.train, folder, resume)
        first = folder / INTERMEDIATE_STAGE
        done = first / "module.safetensors"
        if resume and done.is_file():
            safetensors.torch.load_model(self.module, done)
            log.info("intermediate-layer stage already complete: continuing with the prediction layer")
        else:
            self._phase("intermediate", dataclasses.replace(settings.train, epochs=settings.intermediate_epochs,
                                                            max_steps=None, keep_best=False),
                        first, resume and first.is_dir())
            if is_main_process():
                safetensors.torch.save_model(self.module, done)
        result = self._phase("prediction", settings.train, folder, resume)
        shutil.rmtree(first, ignore_errors=True)
        return result

    def _phase(self, phase: str, train_cfg: TrainConfig, folder: Path, resume: bool) -> FitResult:
        loss_fn = make_task_loss_fn(self.teacher, self.cache, self.needs, self.layer_map, self.settings.loss,
                                    self.settings.task, self.settings.teacher_precision, phase)
        evaluation = self.evaluation
        return fit(self.module, self.rows, self.collate, train_cfg, loss_fn=loss_fn,
                   evaluate_fn=(lambda m: evaluation.score(m.student)) if evaluation else None,
                   monitor=evaluation.monitor if evaluation else "", run_folder=folder, resume=resume,
                   higher_is_better=evaluation.higher_is_better if evaluation else True, batch_order=self.batch_order,
                   description=self.description + (f" ({phase} layers)" if phase != "all" else ""))
