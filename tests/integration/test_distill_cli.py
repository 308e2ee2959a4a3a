"""Task distillation through the CLI on tiny models: students, losses, cache, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from ..conftest import make_sentiment_rows
from .cli_helpers import run_cli


# shuffled batches, not distill's length-grouped default: on the toy's 24 test rows the batch order alone moves a
# student's accuracy between 0.5 and 1.0 (seeds 0-3 and 42, either order), and the accuracy bars below were set for
# the shuffled order at seed 42; tests/unit/test_train.py covers the grouped order
COMMON = ["--epochs", "3", "--batch-size", "16", "--learning-rate", "2e-3", "--no-group-by-length", "--quiet"]


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
    # one teacher pass before training fills the cache; all 3 epochs read it
    assert stats["misses"] == n_train and stats["hits"] == 3 * n_train
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


def test_the_student_is_scored_before_distillation(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "copy"  # every teacher layer and its head copied: it starts where the teacher ends
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "pick=0,1", "--out", str(out),
                            *COMMON[:-1], "--epochs", "1"], capsys)
    assert code == 0, err
    teacher = json.loads((tiny_teacher_run / "lmcompress.json").read_text())["train"]
    teacher_validation = teacher["history"][teacher["best_epoch"] - 1]["accuracy"]
    start = json.loads((out / "lmcompress.json").read_text())["train"]["start"]
    assert start["accuracy"] == pytest.approx(teacher_validation, abs=1e-9)


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


def test_tinybert_two_stage_trains_intermediate_layers_then_the_prediction_layer(tiny_teacher_run, tmp_path, capsys,
                                                                                  monkeypatch):
    from lmcompress.distillation import train as stage_mod

    from .cli_helpers import assert_same_weights, interrupt_then_resume

    phases = []
    real = stage_mod.make_task_loss_fn
    monkeypatch.setattr(stage_mod, "make_task_loss_fn", lambda *a, **k: phases.append(a[-1]) or real(*a, **k))
    args = ["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--hidden-weight", "1",
            "--intermediate-epochs", "1", "--epochs", "2", "--batch-size", "16", "--learning-rate", "2e-3",
            "--checkpoint-every-steps", "2", "--quiet"]
    straight = tmp_path / "straight"
    code, _, err = run_cli([*args, "--out", str(straight)], capsys)
    assert code == 0, err
    assert phases == ["intermediate", "prediction"]
    assert not (straight / stage_mod.INTERMEDIATE_STAGE).exists()  # stage 1's files do not ship
    manifest = json.loads((straight / "lmcompress.json").read_text())
    assert len(manifest["train"]["history"]) == 2  # the prediction stage's two epochs
    assert json.loads((straight / "metrics.json").read_text())["metrics"]["accuracy"] >= 0.75

    # interrupted in the prediction stage, resumed: stage 1 is not redone and the weights match the straight run
    resumed = tmp_path / "resumed"
    steps_per_epoch = -(-manifest["data"]["sizes"]["train"] // 16)
    phases.clear()
    interrupt_then_resume(monkeypatch, capsys, [*args, "--out", str(resumed)], at_backward=steps_per_epoch + 3)
    assert phases == ["intermediate", "prediction", "prediction"]  # stage 1 ran once, before the interruption
    assert_same_weights(straight, resumed)


def test_two_stage_needs_an_intermediate_loss(tiny_teacher_run, tmp_path, capsys):
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out",
                            str(tmp_path / "s"), "--intermediate-epochs", "1", "--quiet"], capsys)
    assert code == 1 and "--intermediate-epochs (TinyBERT two-stage)" in err


def test_augmentation_text_is_labelled_by_the_teacher_and_held_out_rows_are_dropped(tiny_teacher_run, sentiment_csv,
                                                                                      tmp_path, capsys):
    import pandas as pd

    from tests.conftest import make_sentiment_rows

    texts = list(pd.read_csv(sentiment_csv)["text"]) + [r["text"] for r in make_sentiment_rows(40, seed=7)]
    extra = tmp_path / "unlabelled.txt"  # every task text (train, validation, test) plus 40 new ones
    extra.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out", str(out),
                            "--augment", str(extra), "--cache-dir", str(tmp_path / "cache"), *COMMON], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    sizes = manifest["data"]["sizes"]
    assert manifest["augmentation"]["rows"] == len(texts) - sizes["validation"] - sizes["test"]
    assert manifest["teacher_cache"]["misses"] == sizes["train"] + manifest["augmentation"]["rows"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] >= 0.75


def test_augmentation_batches_without_labels_train_on_the_teacher_alone(tiny_teacher_run, tmp_path, capsys):
    extra = tmp_path / "unlabelled.txt"
    extra.write_text("\n\n".join(f"a brand new film number {i}" for i in range(200)) + "\n", encoding="utf-8")
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out",
                            str(tmp_path / "s"), "--augment", str(extra), "--alpha", "0.9", "--epochs", "1",
                            "--batch-size", "4", "--quiet"], capsys)  # many batches hold augmentation rows only
    assert code == 0, err  # no NaN from a hard-label loss over zero labelled rows


def test_word_replaced_variants_are_labelled_by_the_teacher(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out", str(out),
                            "--augment-replace", "3", "--augment-replace-prob", "0.5", "--cache-dir",
                            str(tmp_path / "cache"), *COMMON], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    record, sizes = manifest["augmentation"], manifest["data"]["sizes"]
    assert record["word_replacement"]["variants_per_text"] == 3
    assert sizes["train"] < record["rows"] <= 3 * sizes["train"]  # repeats and unchanged copies are dropped
    assert manifest["teacher_cache"]["misses"] == sizes["train"] + record["rows"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] >= 0.75


def test_word_spans_of_the_training_texts_are_labelled_by_the_teacher(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out", str(out),
                            "--augment-spans", "2", "--cache-dir", str(tmp_path / "cache"), *COMMON], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    record, sizes = manifest["augmentation"], manifest["data"]["sizes"]
    assert record["word_spans"]["spans_per_text"] == 2 and record["rows"] == record["word_spans"]["rows"]
    assert sizes["train"] < record["rows"] <= 2 * sizes["train"]  # short texts and repeats give none
    assert manifest["teacher_cache"]["misses"] == sizes["train"] + record["rows"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] >= 0.75


def test_a_student_with_its_own_tokenizer_learns_from_the_raw_text(tiny_teacher_run, own_vocab_encoder, tmp_path,
                                                                   capsys):
    from transformers import AutoTokenizer

    student_dir = own_vocab_encoder  # a BERT with a WordPiece vocabulary of its own
    student_vocab = AutoTokenizer.from_pretrained(student_dir).get_vocab()
    assert student_vocab != AutoTokenizer.from_pretrained(tiny_teacher_run).get_vocab()

    out = tmp_path / "student"
    # 6 epochs: a student pretrained for 2 steps on its own vocabulary is still at chance after 3 in some orders
    args = ["distill", "--teacher", str(tiny_teacher_run), "--student", str(student_dir), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), *COMMON, "--epochs", "6"]
    # its vocabulary cuts "superbly" into superb ##ly, the teacher's into superb ##l ##y: positions differ
    misaligned = tmp_path / "misaligned.csv"
    pd.DataFrame(make_sentiment_rows(60) + [{"text": "a superbly fun film", "label": "pos"}]).to_csv(misaligned)
    code, _, err = run_cli([*args, "--hidden-weight", "1", "--data", str(misaligned)], capsys)
    assert code == 1 and "token positions do not line up" in err and "'a superbly fun film'" in err
    assert not out.exists() and not (tmp_path / ".student.partial").exists()
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert AutoTokenizer.from_pretrained(out).get_vocab() == student_vocab  # the run ships the student's tokenizer
    manifest = json.loads((out / "lmcompress.json").read_text())
    n_train = manifest["data"]["sizes"]["train"]
    assert manifest["teacher_cache"]["misses"] == n_train  # the teacher's own tokens are cached as usual
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] >= 0.75
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"]["accuracy"] == metrics["accuracy"]


def test_hidden_states_are_matched_across_vocabularies_that_cut_text_the_same_way(
        tiny_teacher_run, same_pieces_student, tmp_path, capsys):
    """Other ids and special tokens, the same pieces (MPNet's tokenizer against BERT's): positions line up, so the
    hidden-state loss is accepted, computed on every step and learned through the width projection."""
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", str(same_pieces_student),
                            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--hidden-weight", "1",
                            "--log-every-steps", "1", *COMMON[:-1]], capsys)
    assert code == 0, err
    assert "cut all 192 training rows into the same pieces" in err.replace("\n", " ")
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    hidden = [line["train/loss_hidden"] for line in steps if "train/loss_hidden" in line]
    assert len(hidden) >= 30 and all(value > 0 for value in hidden)
    assert sum(hidden[-5:]) < 0.8 * sum(hidden[:5])  # the projection and the student learn the teacher's states
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["teacher_cache"]["layers"] == [AutoConfig.from_pretrained(tiny_teacher_run).num_hidden_layers]
    assert AutoTokenizer.from_pretrained(out).cls_token == "<s>"  # the run ships the student's own tokenizer

    left = tmp_path / "left-padded"  # the same pieces, padded on the other side: positions differ again
    shutil.copytree(same_pieces_student, left)
    settings = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps(settings | {"padding_side": "left"}))
    assert AutoTokenizer.from_pretrained(left).padding_side == "left"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", str(left), "--out",
                            str(tmp_path / "refused"), "--hidden-weight", "1", *COMMON], capsys)
    assert code == 1 and "pads on the left, the teacher's on the right" in err
    assert not (tmp_path / "refused").exists() and not (tmp_path / ".refused.partial").exists()


def test_the_pooled_loss_works_across_tokenizers(tiny_teacher_run, own_vocab_encoder, tmp_path, capsys):
    """--pooled-weight compares mean-pooled outputs, each model over its own tokens: accepted where the positional
    losses are refused; the teacher's last layer is cached beside its logits; the projection is not shipped."""
    from transformers import AutoConfig

    out = tmp_path / "pooled"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", str(own_vocab_encoder),
                            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--pooled-weight", "1",
                            "--log-every-steps", "1", *COMMON, "--epochs", "1"], capsys)
    assert code == 0, err
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [line for line in steps if "train/loss" in line]
    assert steps and all(line["train/loss_pooled"] > 0 for line in steps)
    for line in steps:
        parts = [v for k, v in line.items() if k.startswith("train/loss_")]
        assert sum(parts) == pytest.approx(line["train/loss"], rel=1e-4)
    manifest = json.loads((out / "lmcompress.json").read_text())
    teacher_layers = AutoConfig.from_pretrained(tiny_teacher_run).num_hidden_layers
    assert manifest["teacher_cache"]["layers"] == [teacher_layers]
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"]["accuracy"] == json.loads((out / "metrics.json").read_text())["metrics"][
        "accuracy"]


def test_each_part_of_the_loss_is_logged_and_they_sum_to_the_loss(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "parts"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out", str(out),
                            "--hidden-weight", "1", "--minilm-weight", "1", "--relation-heads", "4", "--alpha", "0.3",
                            "--log-every-steps", "1",
                            "--epochs", "1", "--batch-size", "16", "--learning-rate", "2e-3", "--no-cache", "--quiet"],
                           capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "train/loss" in line]
    assert steps
    for line in steps:
        parts = {k: v for k, v in line.items() if k.startswith("train/loss_")}
        assert set(parts) == {"train/loss_hard", "train/loss_kd", "train/loss_hidden", "train/loss_minilm"}
        assert sum(parts.values()) == pytest.approx(line["train/loss"], rel=1e-4)


def test_a_donor_cut_keeps_the_donor_s_layers_and_tokenizer(tiny_teacher_run, own_vocab_encoder, tmp_path, capsys):
    """`--student 'DONOR;layers=1'`: a pre-trained donor with its own vocabulary, cut to one layer (its last, as
    layers=N cuts a teacher), learns from the teacher's logits on the raw text."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    donor = own_vocab_encoder
    donor_layer = AutoModel.from_pretrained(donor).encoder.layer[1].attention.self.query.weight
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", f"{donor};layers=1", "--out",
                            str(out), "--cache-dir", str(tmp_path / "cache"), *COMMON, "--epochs", "1",
                            "--learning-rate", "1e-9"], capsys)
    assert code == 0, err
    student = AutoModelForSequenceClassification.from_pretrained(out)
    assert student.config.num_hidden_layers == 1 and student.config.num_labels == 2
    assert torch.allclose(student.bert.encoder.layer[0].attention.self.query.weight, donor_layer, atol=1e-6)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(donor).get_vocab()
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", f"{donor};layers=5", "--out",
                            str(tmp_path / "too-deep"), *COMMON], capsys)
    assert code == 1 and f"layers=5: donor {donor} has only 2 layers" in err
