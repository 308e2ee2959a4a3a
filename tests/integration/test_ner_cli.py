"""Token classification (NER) through the CLI on a tiny model: finetune -> evaluate -> distill -> compare."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import FILLER, NEGATIVE, POSITIVE
from tests.integration.cli_helpers import SHRINK_STAGES, cached_distill_matches_live, run_cli, shrink_keeps_the_task


@pytest.fixture(scope="module")
def ner_conll(tmp_path_factory):
    """Toy NER: a POSITIVE word starts a person, a NEGATIVE word a place; 'zed' (person) and 'yon' (place) continue
    them. Both are out of the tiny vocabulary and split into several sub-tokens, so alignment matters."""
    rng = random.Random(0)
    sentences = []
    for _ in range(300):
        words: list[tuple[str, str]] = []
        for _ in range(rng.randint(2, 5)):
            words += [(w, "O") for w in rng.sample(FILLER, rng.randint(1, 3))]
            kind, pool, tail = rng.choice([("PER", POSITIVE, "zed"), ("LOC", NEGATIVE, "yon")])
            words.append((rng.choice(pool), f"B-{kind}"))
            if rng.random() < 0.5:
                words.append((tail, f"I-{kind}"))
        sentences.append("\n".join(f"{w} {t}" for w, t in words))
    path = tmp_path_factory.mktemp("ner") / "toy.conll"
    path.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_teacher(tiny_bert_dir, ner_conll, tmp_path_factory):
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("ner-runs") / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--data", str(ner_conll), "--out", str(out),
                 "--epochs", "6", "--batch-size", "16", "--learning-rate", "5e-3", "--max-length", "32",
                 "--quiet"]) == 0
    return out


def test_finetune_learns_entities_and_evaluate_reproduces_f1(ner_teacher, capsys):
    metrics = json.loads((ner_teacher / "metrics.json").read_text())
    assert metrics["task"] == "token-classification" and metrics["main_metric"] == "f1"
    assert metrics["metrics"]["f1"] > 0.8  # toy entities are words from two lists
    assert set(metrics["metrics"]) == {"f1", "precision", "recall", "word_accuracy"}
    config = json.loads((ner_teacher / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"]["0"] == "O" and set(config["id2label"].values()) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}
    code, stdout, err = run_cli(["evaluate", "--model", str(ner_teacher), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"] == metrics["metrics"]


def test_distilled_ner_student_and_compare(ner_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(ner_teacher), "--student", "layers=1", "--out", str(out),
                            "--hidden-weight", "1", "--epochs", "4", "--batch-size", "16", "--learning-rate", "5e-3",
                            "--quiet"], capsys)
    assert code == 0, err
    student = json.loads((out / "metrics.json").read_text())
    assert student["metrics"]["f1"] > 0.6
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(ner_teacher), str(out), "--out", str(report), "--latency-repeats", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert [r["metric"] for r in rows] == ["f1", "f1"]
    assert rows[1]["value"] == pytest.approx(student["metrics"]["f1"], abs=1e-6)


@pytest.mark.parametrize("args,max_drop", SHRINK_STAGES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_prune_quantize_and_export_keep_token_classification(ner_teacher, tmp_path, capsys, args, max_drop):
    shrink_keeps_the_task(ner_teacher, tmp_path, capsys, args, max_drop)


def test_token_logits_are_cached_and_read_back_exactly(ner_teacher, tmp_path, capsys):
    stats = cached_distill_matches_live(ner_teacher, tmp_path, capsys, [
        "--student", "layers=1", "--hidden-weight", "1", "--epochs", "2", "--batch-size", "16"])
    assert stats["layers"] == [2]  # the mapped hidden state is cached beside the per-token logits


def test_load_finds_the_entities_evaluate_scores(ner_teacher):
    """lmcompress.load on an NER run, given each test sentence as plain text: its entities, mapped back onto the
    words, score the same entity F1 as evaluate (which reads the words pre-split)."""
    import lmcompress
    from lmcompress.config import DataConfig
    from lmcompress.data import load_task
    from lmcompress.data.ner import entity_metrics
    from lmcompress.runs.manifest import data_config_for

    task = load_task(data_config_for(DataConfig(), ner_teacher))
    frame = task.splits["test"]
    predictor = lmcompress.load(str(ner_teacher), batch_size=6)
    texts = [" ".join(words) for words in frame["tokens"]]
    predicted = []
    for text, words, entities in zip(texts, frame["tokens"], predictor(texts)):
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])  # each word's first character
        tags = ["O"] * len(words)
        for entity in entities:
            assert text[entity["start"]:entity["end"]] == entity["word"] and 0 < entity["score"] <= 1
            inside = [i for i, start in enumerate(starts) if entity["start"] <= start < entity["end"]]
            tags[inside[0]] = f"B-{entity['entity_group']}"
            for i in inside[1:]:
                tags[i] = f"I-{entity['entity_group']}"
        predicted.append(tags)
    gold = [[task.labels[t] for t in tags] for tags in frame["tags"]]
    expected = json.loads((ner_teacher / "metrics.json").read_text())["metrics"]["f1"]
    assert entity_metrics(gold, predicted, "BIO")["f1"] == pytest.approx(expected, abs=1e-9)
    assert predictor.card.task == "token-classification" and predictor.card.labels[0] == "O"
