"""Reference rows for `compare --baseline`: what a skeptical engineer would ship instead of a transformer.

`tfidf`: TF-IDF of word 1-2 grams + logistic regression (ridge regression for a regression task), fitted on the
teacher's training rows and scored and timed on the same test rows as every other row. Never a Pareto point.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from .errors import LmcError
from .evaluate import MAIN_METRIC, task_metrics

BASELINE_NAME = "tfidf-logreg"


def _texts(frame, has_pair: bool) -> list[str]:
    texts = frame["text"].astype(str)
    return (texts + " " + frame["text_pair"].astype(str)).tolist() if has_pair else texts.tolist()


def _scores(pipeline, texts: list[str], regression: bool) -> np.ndarray:
    """[N, C] class scores (decision function), or [N, 1] predictions for regression."""
    if regression:
        return pipeline.predict(texts).reshape(-1, 1)
    scores = pipeline.decision_function(texts)
    return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores  # binary: one margin -> 2 columns


def _latency_ms(pipeline, texts: list[str], size: int, repeats: int, regression: bool) -> float:
    batch = (texts * (size // max(1, len(texts)) + 1))[:size]
    for _ in range(3):
        _scores(pipeline, batch, regression)
    times = []
    for _ in range(repeats if size > 1 else repeats * 3):
        start = time.perf_counter()
        _scores(pipeline, batch, regression)
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)


def check_tfidf(task) -> None:
    """Before any run is scored: the baseline classifies whole texts."""
    if task.task not in ("classification", "regression"):
        raise LmcError(f"--baseline tfidf scores whole texts; a {task.task} task needs per-token answers (drop "
                       "--baseline)")


def tfidf_row(task, repeats: int) -> dict[str, Any]:
    """The baseline fitted on the training split, as a compare row."""
    check_tfidf(task)
    regression = task.task == "regression"
    model = Ridge(alpha=1.0) if regression else LogisticRegression(max_iter=2000, C=4.0)
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), model)
    train, test = task.splits["train"], task.splits["test"]
    pipeline.fit(_texts(train, task.has_pair), train["label"].to_numpy())
    test_texts = _texts(test, task.has_pair)
    scores = task_metrics(task.task, _scores(pipeline, test_texts, regression), test["label"].to_numpy())
    metric = MAIN_METRIC[task.task]
    params = int(model.coef_.size + np.size(model.intercept_))
    return {"name": BASELINE_NAME, "path": "", "made_by": "baseline: TF-IDF 1-2 grams + "
            + ("ridge regression" if regression else "logistic regression"), "reference": True, "params": params,
            "size_mb": round(params * 4 / 1e6, 2), "metric": metric, "value": round(scores[metric], 6),
            "metrics": scores, "latency_ms_b1": _latency_ms(pipeline, test_texts[:64], 1, repeats, regression),
            "latency_ms_b32": _latency_ms(pipeline, test_texts[:64], 32, repeats, regression)}
