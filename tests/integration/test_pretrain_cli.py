"""`lmcompress pretrain` through the CLI on tiny models and a tiny corpus: every objective, resume, evaluate,
a pretrain -> finetune chain, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.cli_helpers import interrupt_backward_at, one_error_line, run_cli

def _pretrain(model, corpus, out, *extra, cache=None):
    return ["pretrain", "--model", str(model), "--data", str(corpus), "--out", str(out), "--max-length", "32",
            "--batch-size", "8", "--max-steps", "6", "--learning-rate", "1e-3", "--quiet",
            "--cache-dir", str(cache or out.parent / "cache"), *extra]


def test_mlm_nsp_on_a_headless_encoder_gives_a_plain_pretraining_checkpoint(tiny_bert_dir, corpus, tmp_path, capsys):
    out = tmp_path / "mlm-nsp"
    code, stdout, err = run_cli(_pretrain(tiny_bert_dir, corpus, out, "--objective", "mlm+nsp", "--json"), capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["task"] == "mlm+nsp" and metrics["main_metric"] == "perplexity"
    assert {"perplexity", "mlm_accuracy", "nsp_accuracy"} <= set(metrics["metrics"])
    assert metrics["metrics"]["perplexity"] < metrics["metrics_before"]["perplexity"]
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["complete"] and manifest["stage"] == "pretrain" and manifest["train"]["tokens_per_s"] > 0
    assert 0.3 < manifest["data"]["pair_label_share"] < 0.7

    from transformers import AutoModelForPreTraining, AutoTokenizer

    model = AutoModelForPreTraining.from_pretrained(out)  # transformers alone, nothing of ours
    assert type(model).__name__ == "BertForPreTraining" and len(AutoTokenizer.from_pretrained(out)) > 10
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()

    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--no-latency", "--json"], capsys)
    assert code == 0, err
    again = json.loads(stdout)
    assert again["metrics"]["perplexity"] == pytest.approx(metrics["metrics"]["perplexity"], rel=1e-5)


@pytest.mark.parametrize("preset,objective,extra_metric", [
    ("gpt2-2l-32h-4a", "clm", "token_accuracy"),
    ("albert-2l-32h-4a", "mlm+sop", "sop_accuracy"),
    ("roberta-2l-32h-4a", "mlm", "mlm_accuracy"),
])
def test_presets_with_a_vocabulary_trained_on_the_corpus(preset, objective, extra_metric, corpus, tmp_path, capsys):
    out = tmp_path / preset
    code, stdout, err = run_cli(_pretrain(preset, corpus, out, "--objective", objective, "--train-tokenizer", "300",
                                          "--max-ngram", "2", "--masking", "static", "--json"), capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert extra_metric in metrics["metrics"] and metrics["metrics"]["perplexity"] > 1
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert 100 <= len(tokenizer) <= 300  # byte-level BPE starts from 256 bytes; this tiny corpus has few merges
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)


def test_interrupted_pretraining_resumes_to_the_same_weights(tiny_bert_dir, corpus, tmp_path, capsys, monkeypatch):
    args = ["--objective", "mlm+nsp", "--checkpoint-every-steps", "2", "--max-steps", "8"]
    straight = tmp_path / "straight"
    code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, straight, *args), capsys)
    assert code == 0, err

    resumed = tmp_path / "resumed"
    undo = interrupt_backward_at(monkeypatch, 6)  # during step 6: steps 1-4 are checkpointed, step 5 is redone
    code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, resumed, *args), capsys)
    assert code == 1 and "interrupted at step 5" in err
    undo()
    code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, resumed, *args, "--resume"), capsys)
    assert code == 0, err
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # dynamic masks and dropout replayed exactly
    before = json.loads((straight / "metrics.json").read_text())["metrics_before"]
    assert json.loads((resumed / "metrics.json").read_text())["metrics_before"] == before


def test_a_pretrained_run_fine_tunes(tiny_bert_dir, corpus, sentiment_csv, tmp_path, capsys):
    pretrained = tmp_path / "pre"
    code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, pretrained, "--objective", "mlm"), capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["finetune", "--model", str(pretrained), "--data", str(sentiment_csv), "--out",
                                 str(tmp_path / "ft"), "--epochs", "1", "--max-length", "32", "--quiet", "--json",
                                 "--no-keep-best"], capsys)
    assert code == 0, err
    assert "accuracy" in json.loads(stdout)["metrics"]


def test_tokenised_corpus_is_cached_between_runs(tiny_bert_dir, corpus, tmp_path, capsys):
    cache = tmp_path / "shared-cache"
    for name in ("one", "two"):
        code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, tmp_path / name, "--objective", "mlm", cache=cache),
                               capsys)
        assert code == 0, err
    assert len(list((cache / "tokenized").iterdir())) == 1


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("model,extra,fragment", [
    ("roberta-2l-32h-4a", ["--objective", "mlm+nsp", "--train-tokenizer", "120"], "roberta has no sentence-pair head"),
    ("TINY", ["--objective", "clm"], "--objective clm needs a causal LM"),
    ("gpt2-2l-32h-4a", ["--objective", "mlm", "--train-tokenizer", "120"], "needs an encoder"),
    ("TINY", ["--train-tokenizer", "500"], "the model must start from a preset"),
    ("TINY", ["--objective", "sop"], "invalid choice: 'sop'"),
    ("TINY", ["--mask-prob", "1.5"], "mask_prob must be in (0, 1)"),
    ("TINY", ["--max-length", "4"], "max_length must be >= 16"),
])
def test_bad_combinations_fail_in_one_line_before_any_work(model, extra, fragment, tiny_bert_dir, corpus, tmp_path,
                                                          capsys):
    out = tmp_path / "bad"
    model = tiny_bert_dir if model == "TINY" else model
    code, _, err = run_cli(_pretrain(model, corpus, out, *extra), capsys)
    assert code != 0
    one_error_line(err, fragment)
    assert not out.exists() and not (tmp_path / ".bad.partial").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"", "is empty"),
    (b"caf\xe9 au lait\n\nmore text\n", "not UTF-8"),
    (b"just one line\n", "single document"),
    (None, "no such file or folder"),
])
def test_bad_corpora_fail_in_one_line(content, fragment, tiny_bert_dir, tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "bad"
    code, _, err = run_cli(_pretrain(tiny_bert_dir, path, out), capsys)
    assert code == 1
    one_error_line(err, fragment)
    assert not out.exists() and not (tmp_path / ".bad.partial").exists()


def test_compare_language_models_by_perplexity(tiny_bert_dir, corpus, tmp_path, capsys, sentiment_csv):
    longer, shorter = tmp_path / "longer", tmp_path / "shorter"
    for out, steps in ((longer, "12"), (shorter, "2")):
        code, _, err = run_cli(_pretrain(tiny_bert_dir, corpus, out, "--objective", "mlm", "--max-steps", steps), capsys)
        assert code == 0, err
    code, _, err = run_cli(["compare", str(longer), str(shorter), "--out", str(tmp_path / "report"),
                            "--latency-repeats", "2", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["longer"]["metric"] == "perplexity" and rows["longer"]["retention"] == 1.0
    ratio = rows["longer"]["value"] / rows["shorter"]["value"]  # lower is better: retention is inverted
    assert rows["shorter"]["retention"] == pytest.approx(ratio, abs=1e-4)
    own = json.loads((longer / "metrics.json").read_text())["metrics"]["perplexity"]
    assert rows["longer"]["value"] == pytest.approx(own, rel=1e-4)  # the run's own validation set, same figure
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0

    code, _, err = run_cli(["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out",
                            str(tmp_path / "task"), "--epochs", "1", "--max-length", "32", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["compare", str(longer), str(tmp_path / "task"), "--out", str(tmp_path / "mixed")], capsys)
    assert code == 1
    one_error_line(err, "task is not a language-model run")


def test_a_recipe_pretrains_then_fine_tunes(tiny_bert_dir, corpus, sentiment_csv, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "pre.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pre", "steps": [
        {"name": "lm", "stage": "pretrain", "model": str(tiny_bert_dir), "objective": "mlm+nsp",
         "data": {"data": str(corpus), "max_length": 32, "cache_dir": str(tmp_path / "cache")},
         "train": {"max_steps": 4, "batch_size": 8}},
        {"name": "task", "stage": "finetune", "model": "lm", "data": {"data": str(sentiment_csv), "max_length": 32},
         "train": {"epochs": 1, "batch_size": 16}},
    ]}))
    code, _, err = run_cli(["run", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"], capsys)
    assert code == 0, err
    task = json.loads((tmp_path / "runs" / "task" / "lmcompress.json").read_text())
    assert task["parent"] == str(tmp_path / "runs" / "lm") and task["complete"]


def test_clm_preset_with_a_wordpiece_tokenizer_separates_documents_with_sep(tiny_tokenizer_dir, corpus, tmp_path,
                                                                            capsys):
    """A GPT-2 preset given a BERT vocabulary (no end-of-text token) was an internal error; [SEP] now ends each
    document in the packed stream."""
    out = tmp_path / "gpt2-wordpiece"
    code, _, err = run_cli(_pretrain("gpt2-2l-32h", corpus, out, "--objective", "clm", "--tokenizer",
                                     str(tiny_tokenizer_dir)), capsys)
    assert code == 0, err
    from lmcompress.data.lm import SpecialIds, clm_blocks

    tok_sep = 3  # [SEP] in the tiny vocabulary
    blocks = clm_blocks([[(torch.tensor([7, 8]).numpy(), torch.tensor([1, 1]).numpy())]] * 5, 8,
                        SpecialIds(cls=2, sep=tok_sep, eos=None, pad=0, mask=4))
    assert [int(x) for x in blocks[0]["input_ids"][:6]] == [7, 8, tok_sep, 7, 8, tok_sep]
