"""Pair classification and regression through the CLI, on tiny random models."""

from __future__ import annotations

import json
import random

import pandas as pd

from lmcompress.cli import main

from ..conftest import NEGATIVE, POSITIVE


def _pair_rows(n: int) -> list[dict]:
    """Label: do both sentences carry the same sentiment?"""
    rng = random.Random(1)
    rows = []
    for _i in range(n):
        a, b = rng.choice([POSITIVE, NEGATIVE]), rng.choice([POSITIVE, NEGATIVE])
        rows.append({"sentence1": "the film was " + rng.choice(a), "sentence2": "a story very " + rng.choice(b),
                     "label": "same" if a is b else "different"})
    return rows


def _score_rows(n: int) -> list[dict]:
    """Score in [0, 5]: the share of positive words, a learnable regression target."""
    rng = random.Random(2)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 4)
        words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 4 - k)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": k * 1.25 + 0.01})
    return rows


def test_pair_classification(tiny_bert_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    pd.DataFrame(_pair_rows(300)).to_json(data, orient="records", lines=True)
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--data", str(data), "--out", str(out), "--epochs", "2",
                 "--batch-size", "16", "--learning-rate", "2e-3", "--max-length", "32", "--quiet"]) == 0
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["task"] == {"type": "classification", "labels": ["different", "same"], "has_pair": True}
    assert manifest["data"]["columns"] == {"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    metrics = json.loads((out / "metrics.json").read_text())
    # evaluate reads the same two columns from the run's record and scores the same pairs the same way
    assert main(["evaluate", "--model", str(out), "--no-latency", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["test_fingerprint"] == metrics["test_fingerprint"] and again["metrics"] == metrics["metrics"]


def test_regression_learns_the_score(tiny_bert_dir, tmp_path):
    data = tmp_path / "scores.csv"
    pd.DataFrame(_score_rows(400)).to_csv(data, index=False)
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--data", str(data), "--out", str(out), "--epochs", "6",
                 "--batch-size", "16", "--learning-rate", "3e-3", "--max-length", "16", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "regression" and set(metrics["metrics"]) == {"pearson", "spearman", "mse"}
    assert metrics["metrics"]["pearson"] > 0.5  # it learned something real about the score
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"
