"""The one training loop (every training stage calls `fit`), built on accelerate.

Stages supply two callables: `loss_fn(model, batch) -> scalar loss` and `evaluate_fn(model) -> metrics dict`.
The loop owns everything else: AdamW with linear warm-up/decay, gradient accumulation, clipping, mixed
precision, evaluation each epoch with keep-best, periodic and on-signal checkpoints, exact resume, progress,
and logs (`train_log.jsonl` always, TensorBoard scalars when tensorboard is installed).

A checkpoint holds the model (safetensors), optimizer and scheduler state (plain tensors, loaded with
`weights_only=True`), RNG states, and the data position (epoch, batches done), so a resumed run sees exactly the
batches and dropout masks the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_model, save_model
from torch.utils.data import DataLoader, Dataset
from transformers import get_linear_schedule_with_warmup

from .config import TrainConfig
from .console import console
from .errors import LmcError
from .runs import on_all_processes, process_state

log = logging.getLogger("lmcompress")

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class LoopState:
    """Counters saved with every checkpoint."""

    epoch: int = 0
    batches_done_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    skipped_batches: int = 0  # non-finite losses skipped under nan_policy="skip"


@dataclass
class FitResult:
    state: LoopState
    steps: int
    wall_time_s: float
    examples_per_s: float

    def kept_scores(self, monitor: str, higher_is_better: bool, keep_best: bool) -> dict[str, float]:
        """The validation scores of the weights fit returned (the best evaluation's, or the last), from the history:
        they were measured on these very weights, so nothing needs scoring again."""
        pick = max if higher_is_better else min
        chosen = pick(self.state.history, key=lambda h: h[monitor]) if keep_best else self.state.history[-1]
        return {k: v for k, v in chosen.items() if k not in ("epoch", "step")}


def resolve_precision(precision: str) -> str:
    """accelerate's mixed_precision value for our precision option."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not cuda:
        raise LmcError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"fp32": "no"}.get(precision, precision)


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


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch_state)


class ModelWithLoss(torch.nn.Module):
    """`loss_fn(model, batch)` as a module: what accelerate prepares (and DDP wraps) in place of the bare model."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class _Signals:
    """SIGTERM (and, under a launcher, SIGINT) stop training with a checkpoint.

    In one process the signal becomes a KeyboardInterrupt at once: the checkpoint keeps the RNG states of the batch in
    flight, so the resumed run redoes it. Under a launcher the signal reaches the ranks at different instants, one
    maybe inside a gradient all-reduce the others would abandon; so it is only noted, and the ranks agree after each
    optimizer step whether any was signalled, then all stop at that same step (`stop_requested`).
    """

    def __init__(self, launched: bool):
        self.launched, self.requested, self.previous = launched, False, {}

    def __enter__(self) -> _Signals:
        names = ("SIGTERM", "SIGINT") if self.launched else ("SIGTERM",)
        for sig in [getattr(signal, name) for name in names if hasattr(signal, name)]:
            try:
                self.previous[sig] = signal.signal(sig, self._note if self.launched else self._raise)
            except ValueError:  # not the main thread
                continue
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True

    def stop_requested(self) -> bool:
        """Under a launcher, whether any rank was signalled (every rank must ask, after the same step)."""
        return self.launched and not on_all_processes(not self.requested)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


class _Logs:
    """train_log.jsonl always; TensorBoard scalars when the tensorboard package is installed."""

    def __init__(self, folder: Path, enabled: bool):
        self.enabled = enabled
        self.path = folder / "train_log.jsonl"
        self.tb = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(folder / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)

    def forget_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed (that work is redone), so the log reads as one run."""
        if self.enabled and self.path.is_file():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except ValueError:  # a line cut short by a kill -9
                    continue
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def example_lengths(data) -> list[int]:
    """Tokens per training example: a tokenised `datasets.Dataset` column, or each item's input_ids."""
    if hasattr(data, "column_names") and "input_ids" in data.column_names:
        return [len(ids) for ids in data["input_ids"]]
    examples = getattr(data, "examples", data)  # e.g. DynamicMasking wraps a list of examples
    return [len(examples[i]["input_ids"]) for i in range(len(examples))]


class LengthGroupedEpochSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order (random mega-batches, each sorted by length), drawn from (seed, epoch) so
    that a resumed run replays the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    def __len__(self) -> int:
        return len(self.lengths)


def fit(
    model: torch.nn.Module,
    train_data: Dataset,
    collate: Callable,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn,
    evaluate_fn: EvalFn,
    monitor: str,
    higher_is_better: bool,
    run_folder: Path,
    resume: bool,
    description: str = "training",
) -> FitResult:
    """Train `model` in place; on return it holds the best (or last) weights."""
    checkpoint_dir = run_folder / "checkpoint"
    # accelerate keeps one process-wide state; forget the previous stage's precision (the process group, if any,
    # lives in PartialState and is kept) so finetune then distill(precision="bf16") work in one Python process.
    AcceleratorState._reset_state(reset_partial_state=False)
    process_state()  # first: CPU-only machines must tell accelerate so that a torchrun launch is data-parallel
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(cfg.precision),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
        # some parameters get no gradient in some steps (TinyBERT's stages, a pooler a token task skips): DDP must
        # not wait for them
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.group_by_length:
        sampler = LengthGroupedEpochSampler(example_lengths(train_data), cfg.batch_size, cfg.seed)
        # a generator even here: without one the loader draws its worker seed from the global RNG, which would shift
        # dropout between a straight run and a resumed one
        loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                            generator=generator)
    else:
        loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                            generator=generator)
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
    model, optimizer, scheduler = accelerator.prepare(ModelWithLoss(model, loss_fn), optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model).model

    state = LoopState()
    if resume:
        state = _load_checkpoint(checkpoint_dir, unwrapped, optimizer, scheduler, accelerator.process_index)
        log.info("resumed at epoch %d, step %d", state.epoch + 1, state.global_step)

    logs = _Logs(run_folder, accelerator.is_main_process)
    if resume:
        logs.forget_after(state.global_step)
    started = time.perf_counter() - state.elapsed_s
    examples_seen = 0
    session_start = time.perf_counter()
    show_progress = accelerator.is_main_process and log.isEnabledFor(logging.INFO)  # not under --quiet
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} ex/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not show_progress, transient=False,
        console=console(stderr=True),  # stdout stays clean for --json
    )

    # RNG states at the start of the batch in flight: an interrupt inside a batch checkpoints these, so the resumed
    # run redoes that batch with the very dropout (and anything else random) the uninterrupted run used
    in_flight: dict[str, Any] = {}

    def save_checkpoint() -> None:
        state.elapsed_s = time.perf_counter() - started
        rng = in_flight.get("rng") or (_rng_state(), torch.get_rng_state())
        # every rank's RNG states: ranks pad their batches differently, so their dropout streams part ways
        rngs = gather_object([rng])  # [rng] itself in one process
        if accelerator.is_main_process:
            _save_checkpoint(checkpoint_dir, unwrapped, optimizer, scheduler, state, rngs)
        accelerator.wait_for_everyone()

    def evaluate_now(when: str) -> None:
        """Validation metrics into the history and the log; the best weights so far kept aside."""
        with accelerator.autocast():  # validation at the training precision (bf16 runs: bf16), as transformers does
            metrics = evaluate_fn(unwrapped)
        value = metrics[monitor]
        improved = state.best_value is None or (value > state.best_value if higher_is_better
                                                else value < state.best_value)
        state.history.append({"epoch": state.epoch + 1, "step": state.global_step, **metrics})
        logs.write(state.global_step, {f"validation/{k}": v for k, v in metrics.items()})
        if show_progress:
            progress.console.log(f"{when}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                                 + (" (best)" if improved else ""))
        if improved:
            state.best_value, state.best_epoch = value, state.epoch + 1
            if cfg.keep_best and accelerator.is_main_process:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_model(unwrapped, str(checkpoint_dir / "best.safetensors.tmp"))
                os.replace(checkpoint_dir / "best.safetensors.tmp", checkpoint_dir / "best.safetensors")

    try:
        with _Signals(launched=accelerator.num_processes > 1) as signals, progress:
            bar = progress.add_task(description, total=total_steps, completed=state.global_step, loss="-", rate="-")
            running_loss, running_count = 0.0, 0
            while state.epoch < num_epochs and state.global_step < total_steps:
                model.train()
                loader.set_epoch(state.epoch)
                if hasattr(train_data, "set_epoch"):  # e.g. dynamic masking: accelerate only tells the sampler
                    train_data.set_epoch(state.epoch)
                batches = accelerator.skip_first_batches(loader, state.batches_done_in_epoch) \
                    if state.batches_done_in_epoch else loader
                for batch in batches:
                    in_flight["rng"] = (_rng_state(), torch.get_rng_state())
                    with accelerator.accumulate(model):
                        # autocast here, not only in the prepared forward: stages call sub-modules directly
                        with accelerator.autocast():
                            loss = model(batch)
                        # one rank's NaN skips or stops the step on every rank: a rank that went on alone would wait
                        # forever in the gradient all-reduce
                        finite = on_all_processes(bool(torch.isfinite(loss)))
                        if not finite and cfg.nan_policy == "skip" \
                                and state.skipped_batches < cfg.max_skipped_batches:
                            state.skipped_batches += 1
                            log.warning("loss %s at step %d: batch skipped (%d of at most %d)", _loss_text(loss),
                                        state.global_step + 1, state.skipped_batches, cfg.max_skipped_batches)
                            optimizer.zero_grad(set_to_none=True)  # also drops this window's partial gradients
                            state.batches_done_in_epoch += 1
                            in_flight.clear()
                            continue
                        if not finite:
                            raise LmcError(
                                f"loss became {_loss_text(loss)} at step {state.global_step + 1} "
                                f"(epoch {state.epoch + 1})"
                                + (f" after {state.skipped_batches} skipped batches" if state.skipped_batches else "")
                                + "; lower --learning-rate or check the labels (or --nan-policy skip)"
                            )
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    state.batches_done_in_epoch += 1
                    in_flight.clear()
                    running_loss += loss.detach().float().item()
                    running_count += 1
                    examples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
                    if not accelerator.sync_gradients:
                        continue
                    scheduler.step()
                    state.global_step += 1
                    rate = examples_seen / max(1e-9, time.perf_counter() - session_start)
                    progress.update(bar, advance=1, loss=f"{running_loss / running_count:.4f}", rate=f"{rate:.0f}")
                    if state.global_step % cfg.log_every_steps == 0:
                        # every rank reaches this step together: the logged loss is the mean over all their batches
                        mean_loss = running_loss / running_count
                        if accelerator.num_processes > 1:
                            mean_loss = accelerator.reduce(torch.tensor(mean_loss), reduction="mean").item()
                        if not progress.console.is_terminal and accelerator.is_main_process:  # e.g. a log file
                            log.info("step %d/%d loss %.4f %.0f ex/s", state.global_step, total_steps, mean_loss, rate)
                        logs.write(state.global_step, {"train/loss": mean_loss,
                                                       "train/lr": scheduler.get_last_lr()[0],
                                                       "train/examples_per_s": rate})
                        running_loss, running_count = 0.0, 0
                    if cfg.eval_every_steps and state.global_step % cfg.eval_every_steps == 0 \
                            and state.global_step < total_steps and state.batches_done_in_epoch < len(loader):
                        evaluate_now(f"step {state.global_step}/{total_steps}")
                        model.train()
                    if state.global_step % cfg.checkpoint_every_steps == 0:
                        save_checkpoint()
                    if signals.stop_requested():
                        raise KeyboardInterrupt  # on every rank, after this same step: checkpointed below
                    if state.global_step >= total_steps:
                        break
                # end of an epoch (or of max_steps): evaluate, keep the best
                evaluate_now(f"epoch {state.epoch + 1}/{num_epochs}")
                state.epoch += 1
                state.batches_done_in_epoch = 0
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        raise LmcError(
            f"interrupted at step {state.global_step}; checkpoint saved in {checkpoint_dir} — "
            "re-run the same command to continue"
        ) from None
    finally:
        logs.close()

    best = checkpoint_dir / "best.safetensors"
    if cfg.keep_best and best.is_file():
        load_model(unwrapped, str(best))
    wall = time.perf_counter() - started
    return FitResult(state=state, steps=state.global_step, wall_time_s=wall,
                     examples_per_s=examples_seen / max(1e-9, time.perf_counter() - session_start))


def _loss_text(loss: torch.Tensor) -> str:
    """The loss for a message: its value, or where it is finite here, that another rank's was not."""
    value = loss.item()
    return str(value) if not math.isfinite(value) else f"non-finite on another process (here {value:.4f})"


def _save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: LoopState,
                     rngs: list[tuple[dict[str, Any], torch.Tensor]]) -> None:
    """New files under fresh names, then one atomic rename of state.json (which names them) commits the checkpoint;
    a kill -9 at any instant leaves either the previous complete checkpoint or the new one, never a mix."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{state.global_step:08d}-{time.time_ns()}"
    files = {"model": f"model-{tag}.safetensors", "optim": f"optim-{tag}.pt"}
    save_model(model, str(folder / files["model"]))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": [torch_rng for _, torch_rng in rngs]}, folder / files["optim"])  # one per rank
    pending = folder / "state.json.tmp"
    pending.write_text(json.dumps({"loop": state.__dict__, "rng": [py_np for py_np, _ in rngs], "files": files}),
                       encoding="utf-8")
    os.replace(pending, folder / "state.json")  # the commit point
    for old in list(folder.glob("model-*.safetensors")) + list(folder.glob("optim-*.pt")):
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def _load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int = 0) -> LoopState:
    try:
        saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = saved.get("files", {"model": "model.safetensors", "optim": "optim.pt"})
        load_model(model, str(folder / files["model"]))
        extra = torch.load(folder / files["optim"], weights_only=True, map_location="cpu")
    except Exception as exc:
        raise LmcError(f"checkpoint in {folder} is corrupt or incomplete ({type(exc).__name__}); "
                       "re-run with --overwrite to start over") from None
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    rngs, torch_rngs = saved["rng"], extra["torch_rng"]
    if isinstance(rngs, dict):  # a checkpoint from before per-rank states: one for every rank
        rngs, torch_rngs = [rngs], [torch_rngs]
    if rank >= len(rngs):
        log.warning("the checkpoint was written by %d processes, this launch has more: rank %d continues with rank "
                    "0's random state (the run will not repeat the uninterrupted one exactly)", len(rngs), rank)
    pick = rank if rank < len(rngs) else 0
    _set_rng_state(rngs[pick], torch_rngs[pick])
    return LoopState(**saved["loop"])
