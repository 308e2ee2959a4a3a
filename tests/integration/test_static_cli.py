"""`distill --student static`: a model2vec table from the teacher + a KD-trained head; evaluate and compare read it;
model2vec itself loads the saved table; the TF-IDF baseline row in compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from .cli_helpers import one_error_line, run_cli


@pytest.fixture(scope="module")
def static_run(tiny_teacher_run, tmp_path_factory):
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("static") / "static"
    code = main(["distill", "--teacher", str(tiny_teacher_run), "--student", "static;dim=16", "--out", str(out),
                 "--epochs", "12", "--batch-size", "16", "--quiet"])
    assert code == 0
    return out


def test_static_student_learns_the_task_and_reloads_with_model2vec(static_run, tiny_teacher_run):
    from model2vec import StaticModel
    from transformers import AutoTokenizer

    metrics = json.loads((static_run / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] >= 0.9  # the toy task is separable by which words occur
    manifest = json.loads((static_run / "lmcompress.json").read_text())
    assert manifest["student"]["kind"] == "static" and manifest["student"]["dim"] == 16
    # model2vec loads the run as it is; its encoding + the saved head give the logits our scorer used
    static = StaticModel.from_pretrained(str(static_run))
    head = load_file(str(static_run / "classifier.safetensors"))
    texts = ["good fun film", "the plot was awful and dull"]
    logits = torch.from_numpy(static.encode(texts)).float() @ head["weight"].T + head["bias"]

    from lmcompress.models.static import load_static

    ours = load_static(static_run, None, False)
    batch = AutoTokenizer.from_pretrained(str(static_run))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(ours(**batch).logits.numpy(), logits.numpy(), atol=1e-5)


def test_evaluate_and_compare_read_a_static_run_with_a_tfidf_baseline(static_run, tiny_teacher_run, tmp_path,
                                                                       capsys):
    code, _, err = run_cli(["evaluate", "--model", str(static_run), "--latency-repeats", "2", "--out",
                            str(tmp_path / "eval"), "--quiet"], capsys)
    assert code == 0, err
    recorded = json.loads((static_run / "metrics.json").read_text())["metrics"]["accuracy"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["accuracy"] == recorded
    out = tmp_path / "report"
    code, _, err = run_cli(["compare", str(tiny_teacher_run), str(static_run), "--baseline", "tfidf", "--out",
                            str(out), "--latency-repeats", "2", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    baseline = rows["tfidf-logreg"]
    assert baseline["reference"] is True and baseline["params"] > 0 and baseline["latency_ms_b32"] > 0
    assert 0.5 < baseline["value"] <= 1.0 and rows["static"]["value"] == round(recorded, 6)
    assert "tfidf-logreg" in (out / "report.md").read_text()
    # timed side by side: medians with their interquartile range, speedups within each round, the processor named
    static = rows["static"]
    assert static["latency_iqr_ms_b32"][0] <= static["latency_ms_b32"] <= static["latency_iqr_ms_b32"][1]
    assert static["speedup_iqr_b32"][0] <= static["speedup_b32"] <= static["speedup_iqr_b32"][1]
    assert len(static["latency_rounds_ms_b32"]) == 2 and len(static["latency_rounds_ms_b1"]) == 6
    assert report["setup"]["interleaved"] is True and report["setup"]["processor"]["model"]
    assert not baseline["pareto"]


def test_static_student_refuses_token_tasks_and_bad_specs(tiny_teacher_run, tmp_path, capsys):
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "static;dim=0", "--out",
                            str(tmp_path / "bad")], capsys)
    assert code == 1
    one_error_line(err, "dim=N")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


@pytest.mark.parametrize("flags,named", [(["--hidden-weight", "0.5"], "--hidden-weight"),
                                         (["--attention-weight", "1"], "--attention-weight")])
def test_static_student_refuses_the_layer_losses(tiny_teacher_run, tmp_path, capsys, flags, named):
    """A static student has no layers: a hidden-state or attention loss is refused in one line, nothing written."""
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "static;dim=16", "--out",
                            str(tmp_path / "refused"), *flags], capsys)
    assert code == 1
    one_error_line(err, named)
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))
