"""`lmcompress distill-embeddings` on a tiny encoder: bi-encoder distillation and held-aside pair scoring."""

from __future__ import annotations

import json

from tests.integration.cli_helpers import one_error_line, run_cli


def test_bi_encoder_student_learns_the_teachers_embeddings(tiny_bert_dir, corpus, tmp_path, capsys):
    out = tmp_path / "bi-encoder"
    args = ["distill-embeddings", "--teacher", str(tiny_bert_dir), "--student", "layers=1;hidden=16;heads=2",
            "--data", str(corpus), "--validation-fraction", "0.25", "--max-validation-examples", "200",
            "--epochs", "3", "--batch-size", "16", "--learning-rate", "3e-3", "--log-every-steps", "1", "--out", str(out),
            "--quiet", "--json"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["task"] == "sentence-embedding" and metrics["main_metric"] == "spearman"
    assert {"spearman", "teacher_agreement"} <= set(metrics["metrics"]) and metrics["examples"] == 200
    assert -1 <= metrics["metrics"]["teacher_agreement"] <= 1 and "spearman" in metrics["teacher_metrics"]
    assert "teacher_agreement" in metrics["metrics_before"]
    manifest = json.loads((out / "lmcompress.json").read_text())
    losses = [json.loads(line)["train/loss"] for line in (out / "train_log.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert len(losses) > 5 and sum(losses[-3:]) < sum(losses[:3])  # the student moves towards the teacher
    assert manifest["data"]["pairs"] == 200 and manifest["student"]["hidden"] == 16

    from transformers import AutoModel

    assert AutoModel.from_pretrained(out).config.hidden_size == 16  # a plain encoder checkpoint

    # evaluate rebuilds the same held-aside pairs from lmcompress.json and gets the student's spearman back
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--out", str(tmp_path / "eval"), "--json",
                                 "--latency-repeats", "2"], capsys)
    assert code == 0, err
    evaluated = json.loads(stdout)
    assert evaluated["task"] == "sentence-embedding" and evaluated["examples"] == 200
    assert abs(evaluated["metrics"]["spearman"] - metrics["metrics"]["spearman"]) < 1e-6
    assert evaluated["params"] == metrics["params"] and set(evaluated["latency_ms"]) == {"batch1", "batch32"}

    # compare: the teacher (a plain encoder, no run manifest) and the student on those pairs
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(tiny_bert_dir), str(out), "--out", str(report), "--latency-repeats", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((report / "report.json").read_text())
    teacher_row, student_row = result["rows"]
    assert [r["metric"] for r in result["rows"]] == ["spearman", "spearman"]
    assert abs(teacher_row["value"] - metrics["teacher_metrics"]["spearman"]) < 1e-5
    assert abs(student_row["value"] - metrics["metrics"]["spearman"]) < 1e-5
    assert student_row["retention"] == round(student_row["value"] / teacher_row["value"], 4)
    assert "held-aside sentence pairs: 200" in (report / "report.md").read_text()


def test_compare_keeps_embedding_runs_apart_from_task_runs(tiny_teacher_run, tiny_bert_dir, corpus, tmp_path, capsys):
    out = tmp_path / "bi-encoder"
    assert run_cli(["distill-embeddings", "--teacher", str(tiny_bert_dir), "--student", "layers=1", "--data",
                    str(corpus), "--validation-fraction", "0.25", "--max-validation-examples", "20", "--epochs", "1",
                    "--out", str(out), "--quiet"], capsys)[0] == 0
    code, _, err = run_cli(["compare", str(out), str(tiny_teacher_run), "--out", str(tmp_path / "r"), "--quiet"],
                           capsys)
    assert code == 1
    one_error_line(err, "is a classification run; compare sentence-embedding runs with each other")


def test_similarity_pairs_are_half_same_document_half_not():
    from lmcompress.runkinds.embedding import similarity_pairs

    documents = [[f"doc{d} sentence {s}" for s in range(3)] for d in range(4)]
    pairs = similarity_pairs(documents, 100, seed=0)
    assert [p[2] for p in pairs].count(1.0) == 50
    for a, b, score in pairs:
        same = a.split()[0] == b.split()[0]
        assert same == (score == 1.0) and a != b
    assert pairs == similarity_pairs(documents, 100, seed=0)
