"""Task metrics, size, and CPU latency of a model; `evaluate_run` writes metrics.json (schema: docs/run-directories.md)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader

from .config import EvaluateConfig
from .data import load_task
from .data import qa
from .data.ner import TOKEN_TASK, entity_metrics, words_of_labelled_positions
from .data.tokenize import collator, fixed_batch, tokenize_frame
from .errors import LmcError
from .models.load import load_run_model, load_tokenizer
from .models.outputs import forward
from .runs import (METRICS, RunDir, data_config_for, is_embedding_run, is_language_model, is_main_process,
                   read_run_manifest, write_json_atomic)

log = logging.getLogger("lmcompress")

MAIN_METRIC = {"classification": "accuracy", "regression": "pearson", TOKEN_TASK: "f1", qa.QA_TASK: "f1"}
LATENCY_BATCHES = (1, 32)


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


def task_metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """classification: accuracy, macro-F1; regression: Pearson, Spearman, MSE."""
    if task == "classification":
        preds = logits.argmax(-1)
        return {"accuracy": float(accuracy_score(labels, preds)),
                "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}
    preds = logits.reshape(-1)
    constant = np.std(preds) == 0 or np.std(labels) == 0
    return {"pearson": 0.0 if constant else float(pearsonr(preds, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(preds, labels)[0]),
            "mse": float(np.mean((preds - labels) ** 2))}


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once), int8-packed Linear weights and ONNX initialisers included."""
    if hasattr(model, "param_count"):  # OnnxClassifier
        return model.param_count
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):  # its int8 weights live outside parameters()
            total += module.weight().numel() + (module.bias().numel() if module.bias() is not None else 0)
    return total


def weights_size_bytes(folder: Path) -> int:
    """Bytes of the weight files a deployment ships (safetensors / ONNX), not logs or tokenizer."""
    files = list(folder.glob("*.safetensors")) + list(folder.glob("*.onnx")) + list(folder.glob("*.onnx.data"))
    return sum(f.stat().st_size for f in files)


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, make_batch: Callable[[int], dict[str, torch.Tensor]], repeats: int,
                    warmup: int = 3, batch_sizes: tuple[int, ...] = LATENCY_BATCHES) -> dict[str, float]:
    """Median wall time (ms) of a forward pass per batch size, warm-up runs excluded."""
    model.eval()
    out: dict[str, float] = {}
    for size in batch_sizes:
        batch = make_batch(size)
        for _ in range(warmup):
            model(**batch)
        times = []
        for _ in range(repeats if size > 1 else repeats * 3):
            start = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - start) * 1000.0)
        out[f"batch{size}"] = round(statistics.median(times), 3)
    return out


def latency_for_texts(model: torch.nn.Module, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                      repeats: int, threads: int | None) -> dict[str, Any]:
    """Latency on real test texts padded to max_length, with the thread count fixed and recorded."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        latency = measure_latency(
            model, lambda size: fixed_batch(texts[:64], pairs[:64] if pairs else None, tokenizer, max_length, size),
            repeats)
    finally:
        torch.set_num_threads(previous)
    return {"latency_ms": latency, "latency_setup": {"threads": threads or previous, "seq_len": max_length,
                                                     "repeats": repeats, "statistic": "median"}}


def score_split(model, tokenizer, task_data, split: str, max_length: int, batch_size: int) -> dict[str, float]:
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
    """Save the checkpoint and tokenizer, score the test split, time it, write metrics.json."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    metrics = score_test(model, tokenizer, task_data, folder, max_length, batch_size)
    write_json_atomic(folder / METRICS, metrics)
    return metrics


def finish_run(run: RunDir, model: torch.nn.Module, tokenizer, task_data, max_length: int, batch_size: int,
               manifest: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """End of every stage that leaves a PyTorch checkpoint: rank 0 saves, scores and builds lmcompress.json, every
    rank waits for the commit. -> metrics with `path` and `extra` (empty on the other ranks of a launch)."""
    metrics, record = {}, {}
    if is_main_process():
        metrics = save_and_score(model, tokenizer, task_data, run.partial, max_length, batch_size)
        record = manifest()
    final = run.commit(record)
    return metrics | {"path": str(final), **extra} if metrics else {}


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score a run (or a plain HF dir with a classification head) on a split; write metrics.json."""
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise LmcError(f"--model {cfg.model} is not a run directory or Hugging Face checkpoint (no config.json)")
    manifest = read_run_manifest(folder) or {}
    if is_embedding_run(manifest):  # cosine-similarity correlation on its held-aside sentence pairs
        from .distill.embeddings import held_aside_pairs, score_encoder

        recorded, pairs = held_aside_pairs(folder)
        return _write_metrics(score_encoder(folder, pairs, recorded.data.max_length,
                                            cfg.latency_repeats if cfg.latency else None, cfg.threads), cfg, folder)
    if is_language_model(manifest):  # perplexity on its fixed validation set
        from .pretrain import evaluate_lm_run

        return _write_metrics(evaluate_lm_run(folder, cfg.latency, cfg.latency_repeats), cfg, folder)
    recorded = manifest.get("config", {}).get("data") or {}
    if cfg.data.data and recorded.get("data") == cfg.data.data and recorded.get("split_seed") != cfg.data.split_seed:
        log.warning("evaluating with split seed %s but the run was trained with %s: test rows differ",
                    cfg.data.split_seed, recorded.get("split_seed"))
    data_cfg = data_config_for(cfg.data, folder)
    data_cfg.max_train_examples = None  # the split is what matters for scoring
    task_data = load_task(data_cfg)
    expected = manifest.get("data", {}).get("test_fingerprint")
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
    return _write_metrics(metrics_payload(task_data, cfg.split, scores, model, folder, latency), cfg, folder)


def _write_metrics(payload: dict[str, Any], cfg: EvaluateConfig, folder: Path) -> dict[str, Any]:
    """metrics.json into --out (default: the run dir) -> the payload with its `path`."""
    out_dir = Path(cfg.out).expanduser() if cfg.out else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / METRICS, payload)
    return payload | {"path": str(out_dir / METRICS)}
