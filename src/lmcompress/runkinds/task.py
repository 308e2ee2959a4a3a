"""The task run kind (classification, regression, token classification, question answering): scoring on a split,
the metrics.json payload, and the end of every stage that leaves a task model."""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..backends import load_run_model
from ..backends.serving import arithmetic, run_backend, serving_variants
from ..baselines import check_tfidf, tfidf_row
from ..config import CompareConfig, EvaluateConfig
from ..data import load_task, qa
from ..data.ner import TOKEN_TASK, entity_metrics, words_of_labelled_positions
from ..data.tokenize import collator, fixed_batch, tokenize_frame
from ..measure import LATENCY_BATCHES, count_params, latency_for_texts, time_side_by_side, weights_size_bytes
from ..models.families import check_max_length
from ..models.load import load_tokenizer
from ..models.outputs import forward
from ..scores import MAIN_METRIC, task_metrics
from ..roofline import forward_flops
from ..runs.manifest import Manifest, data_config_for
from ..runs.rundir import RunDir, finish_stage

log = logging.getLogger("lmcompress")



@torch.inference_mode()
def predict(model: torch.nn.Module, dataset, collate: Callable, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (logits [N, C], labels [N])"""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # an ONNX session has no parameters: CPU
    logits, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        labels.append(batch.pop("labels").numpy())
        batch = {k: v.to(device) for k, v in batch.items()}
        logits.append(forward(model, batch).logits.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def score_split(model, tokenizer, task_data, split: str, max_length: int, batch_size: int) -> dict[str, float]:
    check_max_length(getattr(model, "config", None), max_length)
    frame = task_data.splits[split]
    if task_data.task == qa.QA_TASK:
        answers = predict_answers(model, tokenizer, frame, max_length, batch_size, task_data.qa_options,
                                  allow_empty=task_data.split_record.get("unanswerable", False))
        return qa.squad_metrics(answers, frame["answer_texts"].tolist())
    dataset = tokenize_frame(frame, tokenizer, max_length)
    if task_data.task == TOKEN_TASK:
        predicted = predict_words(model, dataset, tokenizer, frame, max_length, batch_size)
        names = task_data.labels
        gold = [[names[t] for t in tags] for tags in frame["tags"]]
        return entity_metrics(gold, [[names[t] for t in tags] for tags in predicted],
                              task_data.split_record.get("tag_scheme", "BIO"))
    logits, labels = predict(model, dataset, collator(tokenizer), batch_size)
    return task_metrics(task_data.task, logits, labels)


@torch.inference_mode()
def predict_words(model: torch.nn.Module, dataset, tokenizer, frame, max_length: int,
                  batch_size: int) -> list[list[int]]:
    """Token classification: the predicted tag id of every word of every row (tag 0, "O", for a word the model did
    not see: dropped by the tokenizer or cut off by truncation)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    encoded = tokenizer(frame["tokens"].tolist(), is_split_into_words=True, truncation=True, max_length=max_length)
    predicted: list[list[int]] = []
    row = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator(tokenizer)):
        labels = batch.pop("labels")  # [B, T], IGNORE except at each word's first sub-token
        best = forward(model, {k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu()  # [B, T]
        for b in range(len(labels)):
            tags = [0] * len(frame["tokens"].iloc[row])
            words = words_of_labelled_positions(encoded.word_ids(row))
            for word, tag in zip(words, best[b][labels[b] != -100].tolist()):
                tags[word] = tag
            predicted.append(tags)
            row += 1
    return predicted


@torch.inference_mode()
def predict_answers(model: torch.nn.Module, tokenizer, frame, max_length: int, batch_size: int, options,
                    allow_empty: bool) -> list[str]:
    """Question answering: the answer text the model picks for every row (sliding windows, n-best spans)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    features = qa.tokenize_eval_features(frame, tokenizer, max_length, options.doc_stride)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for batch in DataLoader(features.dataset, batch_size=batch_size, shuffle=False, collate_fn=collator(tokenizer)):
        logits = forward(model, {k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()  # [B, T, 2]
        lengths = batch["attention_mask"].sum(-1).tolist()
        for b, length in enumerate(lengths):
            starts.append(logits[b, :length, 0])
            ends.append(logits[b, :length, 1])
    return qa.decode_answers(starts, ends, features, frame["context"].tolist(), options.n_best,
                             options.max_answer_length, allow_empty)


def metrics_payload(task_data, split: str, scores: dict[str, float], model: torch.nn.Module, folder: Path,
                    latency: dict[str, Any] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "task": task_data.task,
        "split": split,
        "metrics": scores,
        "main_metric": MAIN_METRIC[task_data.task],
        "params": count_params(model),
        "size_bytes": weights_size_bytes(folder),
        "examples": len(task_data.splits[split]),
        "test_fingerprint": task_data.split_record["test_fingerprint"],
    }
    if latency is not None:
        payload.update(latency)
    return payload


def score_test(model: torch.nn.Module, tokenizer, task_data, folder: Path, max_length: int,
               batch_size: int) -> dict[str, Any]:
    """The metrics.json payload of whatever `model` is (PyTorch, int8, ONNX): test scores, size, latency."""
    scores = score_split(model, tokenizer, task_data, "test", max_length, batch_size)
    test = task_data.splits["test"]
    latency = latency_for_texts(model, tokenizer, test["text"].tolist(),
                                test["text_pair"].tolist() if task_data.has_pair else None, max_length, 10, None)
    return metrics_payload(task_data, "test", scores, model, folder, latency)


def save_and_score(model: torch.nn.Module, tokenizer, task_data, folder: Path, max_length: int,
                   batch_size: int) -> dict[str, Any]:
    """Save the checkpoint and tokenizer into `folder`, score the test split, time it -> the metrics.json payload."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return score_test(model, tokenizer, task_data, folder, max_length, batch_size)


def finish_run(run: RunDir, model: torch.nn.Module, tokenizer, task_data, max_length: int, batch_size: int,
               manifest: Callable[[], Manifest], **extra: Any) -> dict[str, Any]:
    """The end of every stage that leaves a PyTorch task model (runs.finish_stage) -> metrics with `path` and
    `extra` (empty on the other ranks of a launch)."""
    return finish_stage(run, lambda folder: save_and_score(model, tokenizer, task_data, folder, max_length, batch_size),
                        lambda metrics: manifest(), **extra)


def evaluate(folder: Path, manifest: Manifest, cfg: EvaluateConfig) -> dict[str, Any]:
    """A task run (or a plain HF dir with a task head) scored on a split of its data -> the metrics.json payload."""
    recorded = manifest.data_options
    if cfg.data.data and recorded.get("data") == cfg.data.data and recorded.get("split_seed") != cfg.data.split_seed:
        log.warning("evaluating with split seed %s but the run was trained with %s: test rows differ",
                    cfg.data.split_seed, recorded.get("split_seed"))
    data_cfg = data_config_for(cfg.data, folder)
    data_cfg.max_train_examples = None  # the split is what matters for scoring
    task_data = load_task(data_cfg)
    expected = manifest.test_fingerprint
    if expected and expected != task_data.split_record["test_fingerprint"]:
        log.warning("the test rows differ from those recorded at training time (fingerprint %s vs %s)",
                    task_data.split_record["test_fingerprint"], expected)
    tokenizer = load_tokenizer(folder)
    model = load_run_model(folder, task_data.labels, task_data.task == "regression", cfg.threads,
                           task=task_data.task)
    scores = score_split(model, tokenizer, task_data, cfg.split, data_cfg.max_length, 64)
    split_frame = task_data.splits[cfg.split]
    latency = None
    if cfg.latency:
        latency = latency_for_texts(model, tokenizer, split_frame["text"].tolist(),
                                    split_frame["text_pair"].tolist() if task_data.has_pair else None,
                                    data_cfg.max_length, cfg.latency_repeats, cfg.threads)
    return metrics_payload(task_data, cfg.split, scores, model, folder, latency)


def compare_rows(cfg: CompareConfig, folders: list[Path], names: list[str], manifests: list[Manifest],
                 teacher_index: int, threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every run scored on the teacher's task test rows on each of its backends (`--backends auto`) or on its own,
    then every (run, backend) timed side by side (interleaved rounds); a row shows its fastest backend."""
    data_cfg = data_config_for(cfg.data, folders[teacher_index])
    task = load_task(data_cfg)
    if cfg.baseline == "tfidf":
        check_tfidf(task)
    test = task.splits["test"]
    texts = test["text"].tolist()[:64]
    pairs = test["text_pair"].tolist()[:64] if task.has_pair else None

    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []  # one per (row, backend): what is timed
    calls: dict[tuple[int, int], Any] = {}  # (entry index, batch size) -> one forward pass on a fixed batch
    with tempfile.TemporaryDirectory(prefix="lmcompress-backends-") as work:  # exports live while they are timed
        for name, folder, manifest in zip(names, folders, manifests):
            recorded = manifest.test_fingerprint
            if recorded and recorded != task.split_record["test_fingerprint"]:
                log.warning("%s was tested on other rows (fingerprint %s); the report scores everyone on %s", name,
                            recorded, task.split_record["test_fingerprint"])
            tokenizer = load_tokenizer(folder)
            batches = {size: fixed_batch(texts, pairs, tokenizer, data_cfg.max_length, size) for size in LATENCY_BATCHES}
            model = load_run_model(folder, task.labels, task.task == "regression", threads, task=task.task).eval()
            variants = (serving_variants(folder, model, batches[max(LATENCY_BATCHES)], Path(work) / str(len(rows)),
                                         threads) if cfg.backends == "auto" else {run_backend(folder): model})
            flops = forward_flops(folder, max(LATENCY_BATCHES), data_cfg.max_length)
            rows.append({"name": name, "path": str(folder), "made_by": manifest.made_by(),
                         "params": count_params(model), "size_mb": round(weights_size_bytes(folder) / 1e6, 2),
                         "metric": MAIN_METRIC[task.task], "gflop_b32": round(flops / 1e9, 3) if flops else None})
            for backend, served in variants.items():
                scores = score_split(served, tokenizer, task, "test", data_cfg.max_length, 64)
                entries.append({"name": name if len(variants) == 1 else f"{name} [{backend}]", "row": len(rows) - 1,
                                "backend": backend, "precision": arithmetic(folder, backend),
                                "value": round(scores[rows[-1]["metric"]], 6), "metrics": scores})
                log.info("%s: %s %.4f", entries[-1]["name"], rows[-1]["metric"], entries[-1]["value"])
                for size in LATENCY_BATCHES:
                    calls[(len(entries) - 1, size)] = functools.partial(served, **batches[size])
        if cfg.baseline == "tfidf":
            _add_tfidf(task, texts, pairs, rows, entries, calls)
        time_side_by_side(entries, calls, cfg.latency_repeats, threads)
    fold_backends(rows, entries)
    return rows, {"task": task.task, "data": task.split_record, "seq_len": data_cfg.max_length,
                  "lower_is_better": False}


def _add_tfidf(task, texts: list[str], pairs: list[str] | None, rows: list[dict[str, Any]],
               entries: list[dict[str, Any]], calls: dict[tuple[int, int], Any]) -> None:
    """The TF-IDF reference row, timed with the others on the same texts (pairs joined)."""
    row, predict_texts = tfidf_row(task)
    rows.append(row)
    entries.append({"name": row["name"], "row": len(rows) - 1, "backend": "scikit-learn", "value": row["value"],
                    "metrics": row.get("metrics")})
    log.info("%s: %s %.4f", row["name"], row["metric"], row["value"])
    joined = [t + " " + p for t, p in zip(texts, pairs)] if pairs else texts
    for size in LATENCY_BATCHES:
        calls[(len(entries) - 1, size)] = functools.partial(predict_texts, (joined * size)[:size])


def fold_backends(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Each row takes its fastest backend's score and timings (batch 32 decides); with more than one backend,
    row["backends"] keeps every backend's, timing rounds included (the report's speedups use the teacher's
    PyTorch rounds)."""
    for index, row in enumerate(rows):
        mine = [e for e in entries if e["row"] == index]
        best = min(mine, key=lambda e: e["latency_ms_b32"])
        row.update({k: v for k, v in best.items() if k not in ("name", "row")})
        if len(mine) > 1:
            row["backends"] = {e["backend"]: {k: v for k, v in e.items() if k not in ("name", "row", "backend")}
                               for e in mine}
