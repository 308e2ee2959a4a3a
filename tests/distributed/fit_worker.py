"""Run by test_multiprocess.py under `torchrun --nproc_per_node 2`: something happens to rank 1 alone at its 3rd
batch, and every rank must meet it at the same step instead of one waiting forever in the gradient all-reduce.

    torchrun --nproc_per_node 2 tests/distributed/fit_worker.py MODE RUN_FOLDER

MODE: nan-skip / nan-stop (rank 1's loss turns NaN; --nan-policy skip or stop), sigterm (rank 1 is sent SIGTERM),
straight (nothing happens), resume (resume the checkpoint in RUN_FOLDER). Prints a JSON line per rank: what fit
returned, or the error it raised; rank 0 saves the final weights as RUN_FOLDER/final.safetensors.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import BertConfig, BertForSequenceClassification

from lmcompress.config import TrainConfig
from lmcompress.errors import LmcError
from lmcompress.distributed import process_state
from lmcompress.training import fit


def main(mode: str, folder: Path) -> None:
    rank = process_state().process_index
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    generator = torch.Generator().manual_seed(0)
    # rows of different lengths: ranks pad their batches differently, so their dropout draws (and RNG states) part
    rows = [{"input_ids": torch.randint(1, 50, (int(torch.randint(3, 13, (1,), generator=generator)),),
                                        generator=generator), "labels": torch.tensor(i % 2)} for i in range(64)]

    def collate(examples):
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.zeros(len(examples), width, dtype=torch.long)
        for b, e in enumerate(examples):
            ids[b, :len(e["input_ids"])] = e["input_ids"]
        return {"input_ids": ids, "attention_mask": (ids != 0).long(),
                "labels": torch.stack([e["labels"] for e in examples])}

    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(**batch).loss
        if rank == 1 and calls["n"] == 3:
            if mode.startswith("nan"):
                return loss * float("nan")
            if mode == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler preempting one rank's process would
        return loss

    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, nan_policy="skip" if mode == "nan-skip" else "stop",
                      max_skipped_batches=2, keep_best=False)
    try:
        result = fit(model, rows, collate, cfg, loss_fn=loss_fn, evaluate_fn=lambda m: {"score": 0.0},
                     monitor="score", higher_is_better=True, run_folder=folder, resume=mode == "resume")
        outcome = {"rank": rank, "steps": result.steps, "skipped": result.state.skipped_batches}
        if rank == 0:
            save_model(model, str(folder / "final.safetensors"))
    except LmcError as exc:
        outcome = {"rank": rank, "error": str(exc)}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    from lmcompress.distributed import close_process_group

    main(sys.argv[1], Path(sys.argv[2]))
    close_process_group()
