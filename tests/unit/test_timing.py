"""Side-by-side timing: rounds visit every model in a rotated order; speedups are taken within each round; the
processor record."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from lmcompress.machine import processor
from lmcompress.timing import interleaved_rounds, per_round_ratios, quartiles


def test_rounds_visit_every_call_once_per_round_in_a_rotated_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    times = interleaved_rounds(calls, rounds=3, warmup=1)
    assert order[:3] == ["a", "b", "c"]  # warm-up
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_a_slow_round_does_not_change_a_within_round_speedup():
    teacher = [10.0, 30.0, 10.0, 10.0]  # round 2 ran on a busy machine: everything 3x slower
    student = [5.0, 15.0, 5.0, 5.0]
    assert per_round_ratios(teacher, student) == [2.0, 2.0, 2.0, 2.0]
    assert quartiles(per_round_ratios(teacher, student)) == (2.0, 2.0, 2.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)


class _Task:
    def __init__(self, train, test, labels, task="classification"):
        self.splits, self.labels, self.task, self.has_pair = {"train": train, "test": test}, labels, task, False


def test_tfidf_scores_columns_follow_label_ids_even_with_a_label_absent_from_training():
    from lmcompress.baselines import tfidf_row

    words = {0: "awful dull", 1: "fine okay", 2: "great superb"}
    train = pd.DataFrame({"text": [f"{words[i % 2 * 2]} film {i}" for i in range(40)],
                          "label": [i % 2 * 2 for i in range(40)]})  # labels 0 and 2 only
    test = pd.DataFrame({"text": ["great superb film", "awful dull film"], "label": [2, 0]})
    row, predict = tfidf_row(_Task(train, test, ["neg", "mid", "pos"]))
    assert row["value"] == 1.0 and row["reference"] is True
    scores = predict(["great superb film"])
    assert scores.shape == (1, 3) and np.isneginf(scores[0, 1]) and scores[0].argmax() == 2


def test_tfidf_needs_two_classes():
    from lmcompress.baselines import tfidf_row
    from lmcompress.errors import LmcError

    train = pd.DataFrame({"text": ["good film"] * 8, "label": [1] * 8})
    with pytest.raises(LmcError, match="cannot be fitted"):
        tfidf_row(_Task(train, train, ["a", "b"]))


def test_the_processor_record_counts_the_cores_this_process_may_use(monkeypatch):
    """A report timed under taskset or a container cpuset says how many CPUs it had, not how many the host has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert processor()["cores"] == 1
