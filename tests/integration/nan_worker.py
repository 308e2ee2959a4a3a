"""Run by test_multiprocess.py under `torchrun --nproc_per_node 2`: the loss turns NaN on rank 1 only, at its 3rd
batch. Every rank must take the same decision (skip that step together, or stop together) instead of one waiting
forever in the gradient all-reduce. Prints a JSON line per rank: what fit returned, or the error it raised.

    torchrun --nproc_per_node 2 tests/integration/nan_worker.py skip|stop RUN_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from lmcompress.config import TrainConfig
from lmcompress.errors import LmcError
from lmcompress.runs import process_state
from lmcompress.train import fit


def main(policy: str, folder: Path) -> None:
    rank = process_state().process_index
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 50, (8,), generator=generator), "labels": torch.tensor(i % 2)}
            for i in range(64)]

    def collate(examples):
        return {"input_ids": torch.stack([e["input_ids"] for e in examples]),
                "labels": torch.stack([e["labels"] for e in examples])}

    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(**batch).loss
        return loss * float("nan") if rank == 1 and calls["n"] == 3 else loss

    cfg = TrainConfig(epochs=1, batch_size=8, nan_policy=policy, max_skipped_batches=2, keep_best=False)
    try:
        result = fit(model, rows, collate, cfg, loss_fn=loss_fn, evaluate_fn=lambda m: {"score": 0.0},
                     monitor="score", higher_is_better=True, run_folder=folder, resume=False)
        outcome = {"rank": rank, "steps": result.steps, "skipped": result.state.skipped_batches}
    except LmcError as exc:
        outcome = {"rank": rank, "error": str(exc)}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
