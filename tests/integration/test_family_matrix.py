"""Every encoder family through every stage, as a user calls them (the CLI), on tiny random models (vocab ~100) with
one shared tokenizer: a failing cell names its family and stage. Every family goes through every stage (an
architecture without an adapter refuses narrowing and pruning in one line: tests/unit/test_families.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import (AlbertConfig, AutoModel, AutoTokenizer, BertConfig, DebertaV2Config, DistilBertConfig,
                          ElectraConfig, ModernBertConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig)

from ..conftest import make_sentiment_rows
from .cli_helpers import run_cli

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=128)
FAMILIES = {
    "bert": lambda ids: BertConfig(**SHAPE, **ids),
    "roberta": lambda ids: RobertaConfig(**SHAPE, **ids),
    "xlm-roberta": lambda ids: XLMRobertaConfig(**SHAPE, **ids),
    "electra": lambda ids: ElectraConfig(**SHAPE, embedding_size=32, **ids),
    "deberta-v2": lambda ids: DebertaV2Config(**SHAPE, **ids),
    "mpnet": lambda ids: MPNetConfig(**SHAPE, **ids),
    "distilbert": lambda ids: DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                               max_position_embeddings=128, **ids),
    "modernbert": lambda ids: ModernBertConfig(**SHAPE, global_attn_every_n_layers=2, **ids),
    "albert": lambda ids: AlbertConfig(**SHAPE, embedding_size=16, **ids),
}
STAGES = ("distill layers=1", "distill narrowed", "prune", "onnx-int8", "export", "compare")
FAST = ["--epochs", "1", "--batch-size", "16", "--max-length", "32", "--quiet"]


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("matrix") / "sentiment.csv"
    pd.DataFrame(make_sentiment_rows(96)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def teachers(tiny_tokenizer_dir, matrix_data, tmp_path_factory):
    """family -> its tiny model fine-tuned through the CLI (made on first use, shared by the family's cells)."""
    made: dict[str, object] = {}

    def teacher(family: str):
        if family not in made:
            root = tmp_path_factory.mktemp(family)
            tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
            ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
            if family == "modernbert":
                ids |= dict(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
            torch.manual_seed(0)
            AutoModel.from_config(FAMILIES[family](ids)).save_pretrained(root / "base")
            tokenizer.save_pretrained(root / "base")
            code = run_cli(["finetune", "--model", str(root / "base"), "--data", str(matrix_data),
                            "--out", str(root / "teacher"), "--learning-rate", "3e-3", *FAST], _NoCapture())
            made[family] = (root, code)
        root, (code, _, err) = made[family]
        assert code == 0, f"{family} finetune: {err}"
        return root / "teacher"

    return teacher


class _NoCapture:
    """run_cli's capsys for a module-scoped fixture (no output is checked there)."""

    def readouterr(self):
        return "", ""


def _command(stage: str, teacher, out) -> list[str]:
    if stage.startswith("distill"):
        spec = "layers=1" if stage == "distill layers=1" else "layers=1;hidden=16;heads=2;ffn=20"
        return ["distill", "--teacher", str(teacher), "--student", spec, "--out", str(out), "--no-cache", *FAST]
    if stage == "prune":
        return ["prune", "--model", str(teacher), "--heads", "0.5", "--ffn", "0.5", "--recovery", "none",
                "--out", str(out), "--quiet"]
    if stage in ("onnx-int8", "export"):
        return (["quantize", "--method", "onnx-int8"] if stage == "onnx-int8" else ["export"]) + \
            ["--model", str(teacher), "--out", str(out), "--quiet"]
    return ["compare", str(teacher), str(teacher), "--out", str(out), "--latency-repeats", "2", "--quiet"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_stage(family, stage, teachers, tmp_path, capsys):
    teacher = teachers(family)
    capsys.readouterr()  # drop what making the shared teacher printed (save_pretrained's progress bar)
    out = tmp_path / "out"
    code, _, err = run_cli(_command(stage, teacher, out), capsys)
    assert code == 0, f"{family} {stage}: {err}"
    if stage == "compare":
        report = json.loads((out / "report.json").read_text())
        assert len(report["rows"]) == 2 and report["rows"][0]["value"] == report["rows"][1]["value"]
        return
    metrics = json.loads((out / "metrics.json").read_text())
    scored_by_teacher = json.loads((teacher / "metrics.json").read_text())
    # the student is scored on the teacher's test rows, and its accuracy is a share of them
    assert metrics["test_fingerprint"] == scored_by_teacher["test_fingerprint"]
    right = metrics["metrics"]["accuracy"] * metrics["examples"]
    assert metrics["examples"] == scored_by_teacher["examples"] and abs(right - round(right)) < 1e-6
    if family == "albert" and stage == "distill layers=1":  # the shared layer applied once: every weight kept
        assert metrics["params"] == scored_by_teacher["params"]
    elif stage in ("distill layers=1", "distill narrowed", "prune"):
        assert metrics["params"] < scored_by_teacher["params"]
    else:  # every weight in the ONNX graph, which adds a few constants (rotary frequencies) and holds a layer
        # ALBERT shares across depth once per use
        assert metrics["params"] >= scored_by_teacher["params"]
    if stage == "distill layers=1":
        assert json.loads((out / "lmcompress.json").read_text())["student"]["layers"] == 1
