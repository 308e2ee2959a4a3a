"""The same command under a 2-process launcher (torchrun, CPU, gloo): data-parallel, rank 0 alone writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def test_two_processes_train_data_parallel_and_only_rank0_writes(tiny_bert_dir, sentiment_csv, tmp_path):
    torchrun = VENV_BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this interpreter")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "lmcompress", "finetune",
           "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out", str(out), "--epochs", "6",
           "--batch-size", "16", "--learning-rate", "3e-3", "--max-length", "32", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["complete"] is True and manifest["processes"] == 2
    assert manifest["train"]["steps"] == 36  # 192 training rows / 16 per batch = 12 batches, split over 2 ranks, x6 epochs
    printed = json.loads(result.stdout[result.stdout.index("{"):])  # one JSON document: rank 1 prints nothing
    assert printed["path"] == str(out) and printed["metrics"]["accuracy"] >= 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no partial dir, no second copy
    assert (result.stdout + result.stderr).count("epoch 6/6: validation") == 1  # rank 1 is silent
    assert not (out / "checkpoint").exists()
