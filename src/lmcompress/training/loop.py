"""The one training loop (every training stage calls `fit`), built on accelerate.

Stages supply two callables: `loss_fn(model, batch)` -> the loss, or (the loss, {part name: its weighted term}),
and `evaluate_fn(model) -> metrics dict` (None: no evaluation, the last weights kept). The loop owns everything
else: AdamW with linear warm-up/decay, gradient accumulation, clipping, mixed precision, evaluation each epoch with
keep-best, periodic and on-signal checkpoints, exact resume (training/checkpoint.py), progress, and logs of the
loss and each of its parts (training/logs.py).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, gather_object
from safetensors.torch import load_model, save_model
from torch.utils.data import Dataset
from transformers import get_linear_schedule_with_warmup

from ..config import TrainConfig
from ..errors import LmcError
from ..machine import cpu_has_bf16
from ..distributed import on_all_processes, process_state
from .checkpoint import BATCH_ORDER, LoopState, load_checkpoint, rng_state, save_checkpoint
from .logs import TrainLogs, progress_bar
from .samplers import BatchOrder, make_loader, order_seed
from .signals import Signals

log = logging.getLogger("lmcompress")

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor | tuple[torch.Tensor, dict[str, Any]]]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class FitResult:
    state: LoopState
    steps: int
    wall_time_s: float
    examples_per_s: float
    device: str = "cpu"  # where it ran (the teacher's passes of a distillation too): `cpu`, `cuda (NVIDIA H200)`
    precision: str = "fp32"  # its autocast: fp32, bf16, fp16

    def kept_scores(self, monitor: str, higher_is_better: bool, keep_best: bool) -> dict[str, float]:
        """The validation scores of the weights fit returned (the best evaluation's, or the last), from the history:
        they were measured on these very weights, so nothing needs scoring again."""
        pick = max if higher_is_better else min
        chosen = pick(self.state.history, key=lambda h: h[monitor]) if keep_best else self.state.history[-1]
        return {k: v for k, v in chosen.items() if k not in ("epoch", "step")}


def resolve_precision(precision: str) -> str:
    """accelerate's mixed_precision value for our precision option. auto = bf16 autocast where the hardware has
    bf16 kernels (a GPU that supports it; a CPU with AMX or AVX512-BF16), else fp32: distillation in bf16 kept the
    accuracy of fp32 at 0.63x its wall time (benchmarks/results/distill_vs_textbrewer.md)."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
        return "bf16" if bf16 else "no"
    if precision == "fp16" and not cuda:
        raise LmcError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"fp32": "no"}.get(precision, precision)


def device_name(device: torch.device) -> str:
    """Where training ran, for the records: `cpu`, or `cuda (NVIDIA H200)`."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all parameters) where torch has it for these tensors. The per-parameter loop
    torch otherwise uses on CPU took 65 ms of a 2-layer student's 210 ms step at batch 32 (the 30k-row embedding
    dominates), fused 12 ms (benchmarks/results/distill_vs_textbrewer.md)."""
    groups = _param_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    except (RuntimeError, ValueError):  # e.g. a parameter dtype or device without a fused kernel
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)


class ModelWithLoss(torch.nn.Module):
    """`loss_fn(model, batch)` as a module: what accelerate prepares (and DDP wraps) in place of the bare model."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (the loss, its named parts: {} when loss_fn returns the loss alone)"""
        out = self.loss_fn(self.model, batch)
        return out if isinstance(out, tuple) else (out, {})


def _accelerator(cfg: TrainConfig) -> Accelerator:
    # accelerate keeps one process-wide state; forget the previous stage's precision (the process group, if any,
    # lives in PartialState and is kept) so finetune then distill(precision="bf16") work in one Python process.
    # accelerate has no public call for this.
    AcceleratorState._reset_state(reset_partial_state=False)
    process_state()  # first: CPU-only machines must tell accelerate so that a torchrun launch is data-parallel
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(cfg.precision),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        # the shuffled order of epoch e is drawn from data_seed + e (accelerate's SeedableRandomSampler)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=order_seed(cfg.seed)),
        step_scheduler_with_optimizer=False,
        # some parameters get no gradient in some steps (TinyBERT's stages, a pooler a token task skips): DDP must
        # not wait for them
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _loss_text(loss: torch.Tensor) -> str:
    """The loss for a message: its value, or where it is finite here, that another rank's was not."""
    value = loss.item()
    return str(value) if not math.isfinite(value) else f"non-finite on another process (here {value:.4f})"


@dataclass
class _Running:
    """The training loss and its parts summed since the last log line."""

    loss: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.loss += loss.detach().float().item()
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {"loss": self.loss / self.count} | {f"loss_{k}": v / self.count for k, v in sorted(self.parts.items())}


class _Loop:
    """One call of `fit`: the prepared model, optimizer and scheduler, the loop's counters, and the steps of an
    epoch as short methods."""

    def __init__(self, accelerator: Accelerator, model, optimizer, scheduler, loader, cfg: TrainConfig,
                 evaluate_fn: EvalFn | None, monitor: str, higher_is_better: bool, run_folder: Path,
                 total_steps: int):
        self.accelerator, self.model, self.optimizer, self.scheduler, self.loader = (accelerator, model, optimizer,
                                                                                       scheduler, loader)
        self.cfg, self.evaluate_fn, self.monitor, self.higher_is_better = cfg, evaluate_fn, monitor, higher_is_better
        self.unwrapped = accelerator.unwrap_model(model).model
        self.checkpoint_dir, self.total_steps = run_folder / "checkpoint", total_steps
        self.state = LoopState()
        self.run_folder = run_folder
        self.logs: TrainLogs | None = None  # opened once the checkpoint (if any) is loaded: see start()
        self.show_progress = accelerator.is_main_process and log.isEnabledFor(logging.INFO)  # not under --quiet
        self.progress = progress_bar(self.show_progress)
        self.running = _Running()
        self.examples_seen = 0
        self.started = self.session_start = time.perf_counter()
        # RNG states at the start of the batch in flight: an interrupt inside a batch checkpoints these, so the
        # resumed run redoes that batch with the very dropout (and anything else random) the uninterrupted run used
        self.in_flight: tuple[dict[str, Any], torch.Tensor] | None = None

    def start(self, resume: bool) -> None:
        """Load the checkpoint when resuming, then open the logs (lines after the checkpoint are dropped: that work
        is redone) and start the clocks: wall time continues the checkpoint's, the example rate counts this
        session's work only."""
        if resume:
            self.state = load_checkpoint(self.checkpoint_dir, self.unwrapped, self.optimizer, self.scheduler,
                                         self.accelerator.process_index)
            log.info("resumed at epoch %d, step %d", self.state.epoch + 1, self.state.global_step)
            if self.state.batch_order != BATCH_ORDER and not self.cfg.group_by_length:
                log.warning("the checkpoint was written when shuffled batches were ordered by seed + epoch: the rest "
                            "of the run draws the current order, so it will not repeat the uninterrupted run exactly "
                            "(rows of this epoch may be seen twice or not at all)")
            self.state.batch_order = BATCH_ORDER
        self.logs = TrainLogs(self.run_folder, self.accelerator.is_main_process)
        if resume:
            self.logs.forget_after(self.state.global_step)
        self.started = time.perf_counter() - self.state.elapsed_s
        self.session_start = time.perf_counter()

    def save_checkpoint(self) -> None:
        self.state.elapsed_s = time.perf_counter() - self.started
        rng = self.in_flight or (rng_state(), torch.get_rng_state())
        # every rank's RNG states: ranks pad their batches differently, so their dropout streams part ways
        rngs = gather_object([rng])  # [rng] itself in one process
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_dir, self.unwrapped, self.optimizer, self.scheduler, self.state, rngs)
        self.accelerator.wait_for_everyone()

    def evaluate(self, when: str) -> None:
        """Validation metrics into the history and the log; the best weights so far kept aside."""
        if self.evaluate_fn is None:
            return
        # validation at the training precision (bf16 runs: bf16), as transformers; on a fork of the random stream
        # (torch's DataLoader draws a seed from it), so how often validation runs never changes the dropout masks
        with torch.random.fork_rng(devices=[]), self.accelerator.autocast():
            metrics = self.evaluate_fn(self.unwrapped)
        state, value = self.state, metrics[self.monitor]
        improved = state.best_value is None or (value > state.best_value if self.higher_is_better
                                                else value < state.best_value)
        state.history.append({"epoch": state.epoch + 1, "step": state.global_step, **metrics})
        self.logs.write(state.global_step, {f"validation/{k}": v for k, v in metrics.items()})
        if self.show_progress:
            self.progress.console.log(f"{when}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                                      + (" (best)" if improved else ""))
        if improved:
            state.best_value, state.best_epoch = value, state.epoch + 1
            if self.cfg.keep_best and self.accelerator.is_main_process:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_model(self.unwrapped, str(self.checkpoint_dir / "best.safetensors.tmp"))
                os.replace(self.checkpoint_dir / "best.safetensors.tmp", self.checkpoint_dir / "best.safetensors")

    def skip_non_finite(self, loss: torch.Tensor) -> bool:
        """The NaN policy. One rank's NaN skips or stops the step on every rank: a rank that went on alone would
        wait forever in the gradient all-reduce. -> whether this batch is skipped (or LmcError: stop)."""
        if on_all_processes(bool(torch.isfinite(loss))):
            return False
        state, cfg = self.state, self.cfg
        if cfg.nan_policy == "skip" and state.skipped_batches < cfg.max_skipped_batches:
            state.skipped_batches += 1
            log.warning("loss %s at step %d: batch skipped (%d of at most %d)", _loss_text(loss),
                        state.global_step + 1, state.skipped_batches, cfg.max_skipped_batches)
            self.optimizer.zero_grad(set_to_none=True)  # also drops this window's partial gradients
            state.batches_done_in_epoch += 1
            self.in_flight = None
            return True
        raise LmcError(f"loss became {_loss_text(loss)} at step {state.global_step + 1} (epoch {state.epoch + 1})"
                       + (f" after {state.skipped_batches} skipped batches" if state.skipped_batches else "")
                       + "; lower --learning-rate or check the labels (or --nan-policy skip)")

    def train_on(self, batch: dict[str, torch.Tensor]) -> bool:
        """Forward, backward and (at the end of an accumulation window) an optimizer step -> False if skipped."""
        self.in_flight = (rng_state(), torch.get_rng_state())
        with self.accelerator.accumulate(self.model):
            # autocast here, not only in the prepared forward: stages call sub-modules directly
            with self.accelerator.autocast():
                loss, parts = self.model(batch)
            if self.skip_non_finite(loss):
                return False
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.cfg.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.batches_done_in_epoch += 1
        self.in_flight = None
        self.running.add(loss, parts)
        self.examples_seen += batch["input_ids"].shape[0] * self.accelerator.num_processes
        return True

    def log_step(self, rate: float) -> None:
        """Every rank reaches this step together: the logged losses are the means over all their batches."""
        means = self.running.means()
        if self.accelerator.num_processes > 1:
            reduced = self.accelerator.reduce(torch.tensor(list(means.values())), reduction="mean").tolist()
            means = dict(zip(means, reduced))
        if not self.progress.console.is_terminal and self.accelerator.is_main_process:  # e.g. a log file
            log.info("step %d/%d loss %.4f %.0f ex/s", self.state.global_step, self.total_steps, means["loss"], rate)
        self.logs.write(self.state.global_step, {f"train/{k}": v for k, v in means.items()}
                        | {"train/lr": self.scheduler.get_last_lr()[0], "train/examples_per_s": rate})
        self.running = _Running()

    def after_step(self, bar, signals: Signals) -> None:
        """Scheduler, counters, progress, logs, mid-epoch evaluation and checkpoints after an optimizer step."""
        state, cfg = self.state, self.cfg
        self.scheduler.step()
        state.global_step += 1
        rate = self.examples_seen / max(1e-9, time.perf_counter() - self.session_start)
        self.progress.update(bar, advance=1, loss=f"{self.running.loss / self.running.count:.4f}", rate=f"{rate:.0f}")
        if state.global_step % cfg.log_every_steps == 0:
            self.log_step(rate)
        if cfg.eval_every_steps and state.global_step % cfg.eval_every_steps == 0 \
                and state.global_step < self.total_steps and state.batches_done_in_epoch < len(self.loader):
            self.evaluate(f"step {state.global_step}/{self.total_steps}")
            self.model.train()
        if state.global_step % cfg.checkpoint_every_steps == 0:
            self.save_checkpoint()
        if signals.stop_requested():
            raise KeyboardInterrupt  # on every rank, after this same step: checkpointed by the caller

    def run_epoch(self, train_data, bar, signals: Signals, num_epochs: int) -> None:
        """The rest of the current epoch (all of it unless resumed inside it), then its evaluation and checkpoint."""
        state = self.state
        self.model.train()
        self.loader.set_epoch(state.epoch)
        if hasattr(train_data, "set_epoch"):  # e.g. dynamic masking: accelerate only tells the sampler
            train_data.set_epoch(state.epoch)
        batches = self.accelerator.skip_first_batches(self.loader, state.batches_done_in_epoch) \
            if state.batches_done_in_epoch else self.loader
        for batch in batches:
            if not self.train_on(batch) or not self.accelerator.sync_gradients:
                continue
            self.after_step(bar, signals)
            if state.global_step >= self.total_steps:
                break
        # end of an epoch (or of max_steps): evaluate, keep the best
        self.evaluate(f"epoch {state.epoch + 1}/{num_epochs}")
        state.epoch += 1
        state.batches_done_in_epoch = 0
        self.save_checkpoint()


def fit(model: torch.nn.Module, train_data: Dataset, collate: Callable, cfg: TrainConfig, *, loss_fn: LossFn,
        evaluate_fn: EvalFn | None, monitor: str, higher_is_better: bool, run_folder: Path, resume: bool,
        description: str = "training", batch_order: BatchOrder | None = None) -> FitResult:
    """Train `model` in place; on return it holds the best (or last) weights."""
    accelerator = _accelerator(cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    loader = make_loader(train_data, collate, cfg, batch_order)
    if len(loader) == 0:
        raise LmcError("the training split is empty")
    # the steps are counted on this rank's share of the batches: with the whole loader's count, N processes would
    # stretch the learning-rate schedule N times past the end of training
    loader = accelerator.prepare(loader)
    updates_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
    total_steps = cfg.max_steps or math.ceil(updates_per_epoch * cfg.epochs)
    num_epochs = math.ceil(total_steps / updates_per_epoch)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    # the loss is computed inside the prepared module's forward: a data-parallel wrapper then sees the whole loss
    # computation (a distillation loss runs the student's sub-modules and projections) and syncs those gradients
    prepared, optimizer, scheduler = accelerator.prepare(ModelWithLoss(model, loss_fn), optimizer, scheduler)
    loop = _Loop(accelerator, prepared, optimizer, scheduler, loader, cfg, evaluate_fn, monitor, higher_is_better,
                 run_folder, total_steps)
    loop.start(resume)
    try:
        with Signals(launched=accelerator.num_processes > 1) as signals, loop.progress:
            bar = loop.progress.add_task(description, total=total_steps, completed=loop.state.global_step, loss="-",
                                         rate="-")
            while loop.state.epoch < num_epochs and loop.state.global_step < total_steps:
                loop.run_epoch(train_data, bar, signals, num_epochs)
    except KeyboardInterrupt:
        loop.save_checkpoint()
        raise LmcError(f"interrupted at step {loop.state.global_step}; checkpoint saved in {loop.checkpoint_dir} — "
                       "re-run the same command to continue") from None
    finally:
        loop.logs.close()
    best = loop.checkpoint_dir / "best.safetensors"
    if cfg.keep_best and evaluate_fn is not None and best.is_file():
        load_model(loop.unwrapped, str(best))
    return FitResult(state=loop.state, steps=loop.state.global_step, wall_time_s=time.perf_counter() - loop.started,
                     examples_per_s=loop.examples_seen / max(1e-9, time.perf_counter() - loop.session_start),
                     device=device_name(accelerator.device),
                     precision={"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision))
