"""What training reports: train_log.jsonl (always), TensorBoard scalars (when tensorboard is installed), and the
progress bar."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..console import console


class TrainLogs:
    """train_log.jsonl always; TensorBoard scalars when the tensorboard package is installed."""

    def __init__(self, folder: Path, enabled: bool):
        self.enabled = enabled
        self.path = folder / "train_log.jsonl"
        self.tb = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            try:  # optional: the tensorboard package is an extra (pip install lmcompress[tensorboard])
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


def progress_bar(show: bool) -> Progress:
    """Steps done of all, the running loss and examples per second, on stderr (stdout stays clean for --json)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} ex/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not show, transient=False, console=console(stderr=True))
