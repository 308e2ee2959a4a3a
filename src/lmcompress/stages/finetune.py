"""`lmcompress finetune`: train a task head (and the encoder under it) on labelled data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig, to_dict
from ..data import load_task
from ..data.tokenize import collator, tokenize_frame
from ..models.families import check_max_length
from ..models.heads import task_head
from ..models.load import load_for_sequence_classification, load_tokenizer, resolve
from ..runkinds.task import finish_run, score_split
from ..scores import MAIN_METRIC
from ..models.outputs import forward
from ..distributed import num_processes
from ..runs.manifest import run_manifest
from ..runs.rundir import RunDir
from ..training import fit

log = logging.getLogger("lmcompress")


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune cfg.model on cfg.data; returns the test metrics written to <out>/metrics.json."""
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)  # before any slow work, so bad --out fails fast
    task_data = load_task(cfg.data)
    source = resolve(cfg.model, cfg.tokenizer)
    tokenizer = load_tokenizer(source.tokenizer_path)
    model = load_for_sequence_classification(source, tokenizer, task_data.num_labels, task_data.labels,
                                             task_data.task == "regression", cfg.train.seed,
                                             head=task_head(task_data.task))
    check_max_length(model.config, cfg.data.max_length)
    sizes = task_data.split_record["sizes"]
    log.info("%s: %s task, %s labels, train/validation/test = %d/%d/%d", cfg.data.data, task_data.task,
             task_data.num_labels if task_data.labels else "scalar", sizes["train"], sizes["validation"], sizes["test"])

    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        max_len = cfg.data.max_length
        train_set = tokenize_frame(task_data.splits["train"], tokenizer, max_len)
        monitor = MAIN_METRIC[task_data.task]

        def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return forward(m, batch).loss

        def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
            return score_split(m, tokenizer, task_data, "validation", max_len, cfg.train.eval_batch_size)

        result = fit(model, train_set, collator(tokenizer), cfg.train, loss_fn=loss_fn, evaluate_fn=evaluate_fn,
                     monitor=monitor, higher_is_better=True, run_folder=run.partial, resume=cfg.resume,
                     description=f"finetune {Path(cfg.out).name}")
        model = model.cpu()  # the saved checkpoint and the latency figures are CPU ones

        return finish_run(
            run, model, tokenizer, task_data, max_len, cfg.train.eval_batch_size,
            lambda: run_manifest("finetune", str(source.path) if source.path else source.spec, to_dict(cfg), task_data,
                                 result, processes=num_processes(), hub=source.hub),
            wall_time_s=round(result.wall_time_s, 1))
