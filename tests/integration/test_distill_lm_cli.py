"""`lmcompress distill-lm` through the CLI on tiny models: causal-LM distillation with exact and top-k (cached) KD,
general (MLM) distillation with intermediate losses, resume, evaluate/compare on the student, and bad input."""

from __future__ import annotations

import json

import pytest

from tests.integration.cli_helpers import assert_same_weights, interrupt_then_resume, one_error_line, run_cli
from tests.integration.test_pretrain_cli import _pretrain


@pytest.fixture(scope="module")
def mlm_teacher(tiny_bert_dir, corpus, tmp_path_factory):
    """The tiny BERT with a trained MLM head."""
    out = tmp_path_factory.mktemp("mlm") / "teacher"
    assert _main(_pretrain(tiny_bert_dir, corpus, out, "--objective", "mlm", "--max-steps", "20")) == 0
    return out


def _main(args: list[str]) -> int:
    from lmcompress.cli import main

    return main(args)


def _distill(teacher, corpus, out, *extra, cache=None, steps: int | None = 8):
    return ["distill-lm", "--teacher", str(teacher), "--data", str(corpus), "--out", str(out), "--max-length", "32",
            "--batch-size", "8", "--learning-rate", "3e-3", "--quiet", "--cache-dir", str(cache or out.parent / "cache"),
            *(["--max-steps", str(steps)] if steps else []), *extra]


def test_causal_lm_distillation_gives_a_plain_gpt2_that_evaluate_and_compare_score(clm_teacher, corpus, tmp_path,
                                                                                    capsys):
    out = tmp_path / "student"
    code, stdout, err = run_cli(_distill(clm_teacher, corpus, out, "--student", "gpt2-1l-32h-4a", "--json"), capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["task"] == "clm" and metrics["main_metric"] == "perplexity"
    assert metrics["metrics"]["perplexity"] < metrics["metrics_before"]["perplexity"]
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["stage"] == "distill-lm" and manifest["lm_config"]["objective"] == "clm"
    assert manifest["teacher_metrics"]["perplexity"] > 1 and manifest["teacher_cache"] is None

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)  # transformers alone
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 1
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(clm_teacher).get_vocab()

    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"]["perplexity"] == pytest.approx(metrics["metrics"]["perplexity"], rel=1e-5)

    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(clm_teacher), str(out), "--out", str(report), "--latency-repeats", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert rows[1]["made_by"] == "distill gpt2-1l-32h-4a" and rows[1]["metric"] == "perplexity"
    assert rows[1]["value"] == pytest.approx(metrics["metrics"]["perplexity"], rel=1e-4)


@pytest.mark.parametrize("sparse", [["--top-k", "8"], ["--sample-k", "8"]], ids=["top-k", "sampled"])
def test_sparse_teacher_cache_fills_once_and_later_epochs_read_it(clm_teacher, corpus, tmp_path, capsys, sparse):
    cache = tmp_path / "cache"
    args = ["--student", "gpt2-1l-32h-4a", *sparse, "--epochs", "2"]
    code, _, err = run_cli(_distill(clm_teacher, corpus, tmp_path / "a", *args, cache=cache, steps=None), capsys)
    assert code == 0, err
    stats = json.loads((tmp_path / "a" / "lmcompress.json").read_text())["teacher_cache"]
    assert stats["misses"] == stats["blocks"] and stats["hits"] == stats["blocks"]  # epoch 1 fills, epoch 2 reads
    assert stats["cached"] == stats["blocks"] and stats["k"] == 8

    code, _, err = run_cli(_distill(clm_teacher, corpus, tmp_path / "b", *args, cache=cache, steps=None), capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "lmcompress.json").read_text())["teacher_cache"]
    assert again["misses"] == 0 and again["hits"] == 2 * stats["blocks"]  # a second student never runs the teacher
    assert_same_weights(tmp_path / "a", tmp_path / "b")  # cached values are exactly what the live run trained on


@pytest.mark.parametrize("kd", [["--kd-direction", "reverse"], ["--sample-k", "4"]], ids=["reverse", "sampled"])
def test_interrupted_lm_distillation_resumes_to_the_same_weights(clm_teacher, corpus, tmp_path, capsys, monkeypatch,
                                                                 kd):
    """Sampled KD too: an example's draws are seeded by the example, so the rows the interrupted run cached and the
    rows the straight run drew live are the same tokens."""
    args = ["--student", "gpt2-1l-32h-4a", *kd, "--checkpoint-every-steps", "2"]
    straight = tmp_path / "straight"
    assert run_cli(_distill(clm_teacher, corpus, straight, *args), capsys)[0] == 0
    resumed = tmp_path / "resumed"
    interrupt_then_resume(monkeypatch, capsys, _distill(clm_teacher, corpus, resumed, *args), at_backward=6)
    assert_same_weights(straight, resumed)


@pytest.mark.parametrize("sparse", [["--top-k", "8"], ["--sample-k", "8"]], ids=["top-k", "sampled"])
def test_general_distillation_with_static_masks_caches_the_masked_positions(mlm_teacher, corpus, tmp_path, capsys,
                                                                           sparse):
    """One mask per example, drawn once: the teacher's (sparse) logits at the masked positions are cached like a
    causal teacher's, and a run that reads them all back trains to the same weights."""
    cache = tmp_path / "cache"
    args = ["--student", "layers=1", "--masking", "static", *sparse, "--epochs", "2", "--temperature", "2"]
    stats = []
    for name in ("a", "b"):
        code, _, err = run_cli(_distill(mlm_teacher, corpus, tmp_path / name, *args, cache=cache, steps=None), capsys)
        assert code == 0, err
        stats.append(json.loads((tmp_path / name / "lmcompress.json").read_text())["teacher_cache"])
    assert stats[0]["misses"] == stats[0]["blocks"] == stats[0]["hits"] and stats[1]["misses"] == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_general_distillation_from_a_derived_student_with_intermediate_losses(mlm_teacher, corpus, sentiment_csv,
                                                                             tmp_path, capsys):
    out = tmp_path / "general"
    code, stdout, err = run_cli(_distill(mlm_teacher, corpus, out, "--student", "layers=1;hidden=16;heads=2",
                                         "--hidden-weight", "1", "--minilm-weight", "1", "--relation-heads", "4",
                                         "--temperature", "2", "--json"), capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["task"] == "mlm" and "mlm_accuracy" in metrics["metrics"]
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["student"]["layer_map"] == [2] and manifest["student"]["hidden"] == 16
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 16
    # the distilled encoder fine-tunes like any checkpoint (the second stage of general distillation)
    code, stdout, err = run_cli(["finetune", "--model", str(out), "--data", str(sentiment_csv), "--out",
                                 str(tmp_path / "ft"), "--max-steps", "2", "--quiet", "--json"], capsys)
    assert code == 0, err
    assert "accuracy" in json.loads(stdout)["metrics"]


def test_a_headless_teacher_teaches_through_relations_only(tiny_bert_dir, corpus, tmp_path, capsys):
    out = tmp_path / "minilm-style"
    code, _, err = run_cli(_distill(tiny_bert_dir, corpus, out, "--student", "layers=1"), capsys)
    assert code == 1
    one_error_line(err, "no trained MLM head", "--alpha 1")
    code, _, err = run_cli(_distill(tiny_bert_dir, corpus, out, "--student", "layers=1", "--alpha", "1",
                                    "--minilm-weight", "1", "--relation-heads", "4"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("student,extra,fragment", [
    ("bert-1l-32h-4a", [], "--objective clm needs a causal LM"),
    ("gpt2-1l-32h-4a", ["--objective", "mlm"], "needs an encoder"),
    ("gpt2-1l-32h-4a", ["--alpha", "1"], "takes nothing from the teacher"),
    ("gpt2-1l-32h-4a", ["--pooled-weight", "1"], "distilled token by token"),
    ("gpt2-1l-32h-4a", ["--top-k", "4", "--kd-direction", "reverse"], "reverse KL needs the teacher's whole"),
    ("gpt2-1l-32h-4a", ["--top-k", "4", "--sample-k", "4"], "choose one sparse teacher"),
    ("TINY_BERT", [], "--objective clm needs a causal LM"),
])
def test_bad_lm_distillation_setups_fail_in_one_line(student, extra, fragment, clm_teacher, tiny_bert_dir, corpus,
                                                     tmp_path, capsys):
    student = str(tiny_bert_dir) if student == "TINY_BERT" else student
    out = tmp_path / "bad"
    code, _, err = run_cli(_distill(clm_teacher, corpus, out, "--student", student, *extra), capsys)
    assert code in (1, 2)
    one_error_line(err, fragment)
    assert not out.exists()


def test_students_with_another_vocabulary_are_refused(clm_teacher, corpus, tmp_path, capsys):
    other = tmp_path / "other"  # same architecture, vocabulary trained separately (a different size)
    code, _, err = run_cli(_pretrain("gpt2-1l-32h-4a", corpus, other, "--objective", "clm", "--train-tokenizer", "320",
                                     "--max-steps", "1"), capsys)
    assert code == 0, err
    code, _, err = run_cli(_distill(clm_teacher, corpus, tmp_path / "s", "--student", str(other)), capsys)
    assert code == 1
    one_error_line(err, "differs from the teacher's", "lmcompress distill")


def test_a_cache_with_dynamic_masks_asks_for_static_ones(mlm_teacher, corpus, tmp_path, capsys):
    code, _, err = run_cli(_distill(mlm_teacher, corpus, tmp_path / "bad", "--student", "layers=1", "--top-k", "4"),
                           capsys)
    assert code == 1
    one_error_line(err, "add --masking static")
    assert not (tmp_path / "bad").exists()
