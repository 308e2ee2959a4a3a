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


def test_two_processes_share_one_teacher_cache(tiny_teacher_run, tmp_path):
    """Rank 0 creates the memory-mapped teacher cache, both ranks fill the rows of their shards in epoch 1 and read
    rows either filled in epoch 2; the counts in lmcompress.json are summed over the ranks. A later run, launched or
    not, finds every row cached."""
    torchrun = VENV_BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this interpreter")
    cache = tmp_path / "cache"

    def distill(out: Path, processes: int) -> dict:
        launcher = [str(torchrun), "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
        cmd = [*launcher, "-m", "lmcompress", "distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1",
               "--hidden-weight", "1", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--cache-dir",
               str(cache), "--quiet"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        manifest = json.loads((out / "lmcompress.json").read_text())
        assert manifest["processes"] == processes
        return manifest["teacher_cache"]

    first = distill(tmp_path / "launched", 2)
    n = first["examples"]
    assert first["cached"] == n
    # the teacher pass before training computes every row once (each rank a share), both epochs read them back (a
    # rank may pad its last batch with a repeated row)
    assert first["misses"] == n and 2 * n <= first["hits"] <= 2 * n + 32, first
    assert distill(tmp_path / "again", 2)["misses"] == 0
    assert distill(tmp_path / "single", 1)["misses"] == 0
