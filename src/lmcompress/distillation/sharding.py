"""`--fsdp`: the frozen teacher sharded over the processes of a launch (PyTorch FSDP2, `fully_shard`).

Each process keeps 1/N of every teacher weight; a forward gathers one transformer block at a time and frees it
again, so a teacher N times larger than one device's memory still teaches (the student, small by design, stays
data-parallel). The teacher is loaded whole into CPU memory first and its shards then moved to the device, so the
device never holds it whole.

A sharded forward is a collective: every process must run the teacher the same number of times, in the same order.
The callers keep that: the teacher-cache decision is taken jointly (`runs.on_all_processes`), and the teacher pass
that fills the cache gives every process the same number of batches.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

from torch import nn

from ..errors import LmcError
from ..models.families import family_of
from ..distributed import process_state

log = logging.getLogger("lmcompress")


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # public in torch >= 2.6 only; the pin is 2.13, the floor 2.4

    return isinstance(model, FSDPModule)


def repeated_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer's layer stack: the family's layer list (models/families.py), else the longest ModuleList."""
    family = family_of(model.config) if hasattr(model, "config") else None
    if family is not None:
        return family.layer_list(model)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise LmcError(f"--fsdp: {type(model).__name__} has no list of layers to shard; run without --fsdp")
    return max(lists, key=len)


def shard_teacher(teacher: nn.Module) -> dict[str, int] | None:
    """Shard `teacher` in place over the processes of this launch -> {processes, params, params_per_process}, or
    None (and the teacher left whole) in a single process.

    Each layer is its own FSDP unit (gathered only while it runs); the root unit keeps the rest: embeddings, heads,
    and weights tied between them (an LM head tied to the input embeddings must live in one unit).
    """
    state = process_state()
    if state.num_processes == 1:
        log.warning("--fsdp shards the teacher over the processes of a launch (torchrun or accelerate launch "
                    "--num_processes N); in one process the teacher stays whole")
        return None
    from torch.distributed.device_mesh import init_device_mesh  # (see is_sharded)
    from torch.distributed.fsdp import fully_shard

    teacher.requires_grad_(False)
    total = sum(p.numel() for p in teacher.parameters())
    mesh = init_device_mesh(state.device.type, (state.num_processes,))
    for block in repeated_blocks(teacher):
        fully_shard(block, mesh=mesh)
    fully_shard(teacher, mesh=mesh)
    teacher.register_forward_hook(_after_forward(state.device.type == "cpu"))
    if state.device.type == "cpu":
        _trim_heap()  # the whole teacher, freed by sharding
    here = sum(p.to_local().numel() for p in teacher.parameters())
    log.info("teacher sharded over %d processes: %s of its %s weights on each", state.num_processes, f"{here:,}",
             f"{total:,}")
    return {"processes": state.num_processes, "params": total, "params_per_process": here}


def _after_forward(on_cpu: bool):
    def hook(module, args, output) -> None:
        # FSDP keeps the root unit gathered after a forward, expecting a backward; a frozen teacher has none, so its
        # embeddings and heads are sharded again at once
        module.reshard()
        if on_cpu:
            _trim_heap()  # the layers gathered for this forward

    return hook


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _trim_heap() -> None:
    """On CPU the teacher's shards and gathered layers live in host memory, and glibc keeps what is freed in its heap:
    without handing it back, a sharded teacher held more resident memory than a whole one (smollm2-135m, 2 processes:
    about 1,000 MB vs 1,100-1,140 MB after a few forwards, against 865 MB with it; no measurable cost per forward)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
