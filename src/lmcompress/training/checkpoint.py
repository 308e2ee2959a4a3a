"""Checkpoints of the training loop: the model (safetensors), optimizer and scheduler state (plain tensors, loaded
with `weights_only=True`), every rank's RNG states and the loop's counters (epoch, batches done), so a resumed run
sees exactly the batches and dropout masks the uninterrupted run would have seen."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ..errors import LmcError
from .samplers import ORDER_SCHEME

log = logging.getLogger("lmcompress")


# how shuffled epochs are ordered (samplers.order_seed); checkpoints from before it say "seed+epoch"
BATCH_ORDER = ORDER_SCHEME


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
    batch_order: str = BATCH_ORDER


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch_state)


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: LoopState,
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


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int = 0) -> LoopState:
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
    set_rng_state(rngs[pick], torch_rngs[pick])
    return LoopState(**{"batch_order": "seed+epoch", **saved["loop"]})
