"""`lmcompress demo`: the built-in offline demo on a real model and real data.

Today it fine-tunes the `minilm-l6` teacher on `rotten-tomatoes` and evaluates it on the fixed test split; the
distillation, pruning, quantization and report stages join it as they land. Re-running reuses complete runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from .console import console
from .config import DataConfig, FinetuneConfig, TrainConfig
from .finetune import finetune
from .runs import METRICS, is_complete
from . import catalog

log = logging.getLogger("lmcompress")


def demo_config(quick: bool, out: str, overwrite: bool) -> FinetuneConfig:
    data = DataConfig(data="rotten-tomatoes", max_length=64, max_train_examples=1000 if quick else None)
    train = TrainConfig(epochs=1.0 if quick else 3.0, batch_size=32, learning_rate=5e-5 if not quick else 1e-4,
                        checkpoint_every_steps=100)
    return FinetuneConfig(model="minilm-l6", out=str(Path(out) / ("teacher-quick" if quick else "teacher")),
                          data=data, train=train, overwrite=overwrite)


def run_demo(quick: bool = False, out: str = "runs/demo", overwrite: bool = False) -> dict[str, Any]:
    for name in ("minilm-l6", "rotten-tomatoes"):
        catalog.get(name).require()  # one-line error naming the install command if missing
    cfg = demo_config(quick, out, overwrite)
    started = time.perf_counter()
    teacher_dir = Path(cfg.out)
    if is_complete(teacher_dir) and not overwrite:
        log.info("reusing the complete teacher run %s (pass --overwrite to redo it)", teacher_dir)
        import json

        metrics = json.loads((teacher_dir / METRICS).read_text(encoding="utf-8"))
    else:
        log.info("fine-tuning minilm-l6 on rotten-tomatoes%s", " (quick: 1,000 training rows, 1 epoch)" if quick else "")
        metrics = finetune(cfg)
    wall = time.perf_counter() - started

    table = Table(title=f"lmcompress demo — rotten-tomatoes test split ({metrics.get('examples', '?')} reviews)")
    for column in ("model", "accuracy", "macro-F1", "params", "size MB", "ms @ b1", "ms @ b32"):
        table.add_column(column, justify="right" if column != "model" else "left")
    m, lat = metrics["metrics"], metrics.get("latency_ms", {})
    table.add_row("teacher minilm-l6 (fine-tuned)", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}",
                  f"{metrics['params']:,}", f"{metrics['size_bytes'] / 1e6:.1f}", f"{lat.get('batch1', 0):.1f}",
                  f"{lat.get('batch32', 0):.1f}")
    out = console()
    out.print(table)
    out.print(f"run: {teacher_dir}  (metrics.json, lmcompress.json, plain HF checkpoint)   demo wall time {wall:.0f} s")
    out.print("[dim]students (distill / prune / ALBERT / int8) and the comparison report join the demo as those "
                  "stages land.[/]")
    return {"teacher": metrics, "wall_time_s": wall}
