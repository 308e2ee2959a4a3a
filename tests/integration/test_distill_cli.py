"""Task distillation through the CLI on tiny models: students, losses, cache, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .cli_helpers import run_cli


COMMON = ["--epochs", "3", "--batch-size", "16", "--learning-rate", "2e-3", "--quiet"]


def test_narrow_student_with_hidden_loss_uses_the_cache(tiny_teacher_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1;hidden=16;heads=2;ffn=20",
            "--out", str(out), "--hidden-weight", "1", "--embedding-weight", "1", "--cache-dir", str(cache), *COMMON]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    n_train = manifest["data"]["sizes"]["train"]
    assert manifest["data"]["test_fingerprint"] == json.loads(
        (tiny_teacher_run / "lmcompress.json").read_text())["data"]["test_fingerprint"]  # same test rows
    stats = manifest["teacher_cache"]
    assert stats["misses"] == n_train and stats["hits"] == 2 * n_train  # teacher ran in epoch 1 only
    assert manifest["student"]["layer_map"] == [2] and manifest["student"]["hidden"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_metrics = json.loads((tiny_teacher_run / "metrics.json").read_text())
    assert metrics["params"] < teacher_metrics["params"] / 2
    assert metrics["metrics"]["accuracy"] >= 0.75  # toy task: the student learns it from the teacher

    again = tmp_path / "student2"
    code, _, err = run_cli([*args[:6], str(again), *args[7:]], capsys)
    assert code == 0, err
    assert json.loads((again / "lmcompress.json").read_text())["teacher_cache"]["misses"] == 0  # all cached

    script = f"from transformers import AutoModelForSequenceClassification as A; m = A.from_pretrained({str(out)!r}); " \
             "print(m.config.num_hidden_layers, m.config.hidden_size)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.stdout.split() == ["1", "16"], result.stderr[-1000:]


def test_attention_and_minilm_losses_with_copied_layers(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "pick=1", "--out", str(out),
                            "--attention-weight", "1", "--minilm-weight", "1", "--relation-heads", "4",
                            "--cosine-weight", "1", "--layer-map", "1:2", *COMMON], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["teacher_cache"] is None and manifest["student"]["teacher_layers_copied"] == [1]
    assert json.loads((out / "config.json").read_text()).get("_attn_implementation") in (None, "sdpa")


def test_preset_student_shares_the_teacher_tokenizer(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "bert-1l-32h-4a",
                            "--out", str(out), "--no-cache", *COMMON], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--student", "layers=9"], "only 2 layers"),
    (["--student", "layers=1", "--layer-map", "1:7"], "teacher layers 1..2"),
    (["--student", "layers=1;hidden=16;heads=2", "--attention-weight", "1"], "equal head counts"),
    (["--student", "layers=1;hidden=16;heads=2", "--cosine-weight", "1"], "equal hidden widths"),
    (["--student", "layers=1", "--minilm-weight", "1", "--relation-heads", "5"], "does not divide"),
    (["--student", "depth=1"], "not one of pick=, layers="),
    (["--student", "layers=1", "--alpha", "1.5"], "alpha must be in [0, 1]"),
])
def test_bad_distill_input(tiny_teacher_run, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--out", str(out), *extra, "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("lmcompress: error:") and message in lines[0], err
    assert not out.exists() and not (tmp_path / ".bad.partial").exists()


def test_teacher_must_be_a_fine_tuned_run(tmp_path, capsys):
    code, _, err = run_cli(["distill", "--teacher", "minilm-l6", "--student", "layers=2", "--out", str(tmp_path / "x")],
                           capsys)
    assert code == 1 and "fine-tune it first" in err
