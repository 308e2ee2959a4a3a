"""Processes of a launch (torchrun / accelerate): which one writes, barriers, and sums across ranks. In a plain run
there is one process and every helper is a no-op."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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
