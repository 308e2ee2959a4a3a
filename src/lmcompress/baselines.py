"""Reference rows for `compare --baseline`: what a skeptical engineer would ship instead of a transformer.

`tfidf`: TF-IDF of word 1-2 grams + logistic regression (ridge regression for a regression task), fitted on the
teacher's training rows and scored and timed on the same test rows as every other row. Never a Pareto point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from .errors import LmcError
from .scores import MAIN_METRIC, task_metrics

BASELINE_NAME = "tfidf-logreg"


def _texts(frame, has_pair: bool) -> list[str]:
    texts = frame["text"].astype(str)
    return (texts + " " + frame["text_pair"].astype(str)).tolist() if has_pair else texts.tolist()


def _scores(pipeline, texts: list[str], regression: bool, num_labels: int) -> np.ndarray:
    """[N, num_labels] class scores (decision function, columns placed by label id: a label absent from the
    training rows scores -inf), or [N, 1] predictions for regression."""
    if regression:
        return pipeline.predict(texts).reshape(-1, 1)
    margins = pipeline.decision_function(texts)
    classes = pipeline.classes_
    scores = np.full((len(texts), num_labels), -np.inf)
    if margins.ndim == 1:  # binary: one margin, positive for classes_[1]
        scores[:, classes[0]], scores[:, classes[1]] = -margins, margins
    else:
        scores[:, classes] = margins
    return scores


def check_tfidf(task) -> None:
    """Before any run is scored: the baseline classifies whole texts."""
    if task.task not in ("classification", "regression"):
        raise LmcError(f"--baseline tfidf scores whole texts; a {task.task} task needs per-token answers (drop "
                       "--baseline)")


def tfidf_row(task) -> tuple[dict[str, Any], Callable[[list[str]], object]]:
    """The baseline fitted on the training split -> (its compare row, without latency; what one prediction call is,
    texts in, scores out, vectorising included), for the caller to time beside the other rows."""
    check_tfidf(task)
    regression = task.task == "regression"
    model = Ridge(alpha=1.0) if regression else LogisticRegression(max_iter=2000, C=4.0)
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), model)
    train, test = task.splits["train"], task.splits["test"]
    try:
        pipeline.fit(_texts(train, task.has_pair), train["label"].to_numpy())
    except ValueError as exc:  # one class only, or no word kept by min_df
        raise LmcError(f"--baseline tfidf cannot be fitted on these training rows: {exc}") from None
    num_labels = len(task.labels or [])
    scores = task_metrics(task.task, _scores(pipeline, _texts(test, task.has_pair), regression, num_labels),
                          test["label"].to_numpy())
    metric = MAIN_METRIC[task.task]
    params = int(model.coef_.size + np.size(model.intercept_))
    row = {"name": BASELINE_NAME, "path": "", "made_by": "baseline: TF-IDF 1-2 grams + "
           + ("ridge regression" if regression else "logistic regression"), "reference": True, "params": params,
           "size_mb": round(params * 4 / 1e6, 2), "metric": metric, "value": round(scores[metric], 6), "metrics": scores}
    return row, lambda texts: _scores(pipeline, texts, regression, num_labels)
