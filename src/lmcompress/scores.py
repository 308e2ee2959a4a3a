"""Task metrics from predictions (pure functions): what every task run, and the TF-IDF baseline, is scored by."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from .data.ner import TOKEN_TASK
from .data.qa import QA_TASK

MAIN_METRIC = {"classification": "accuracy", "regression": "pearson", TOKEN_TASK: "f1", QA_TASK: "f1"}


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
