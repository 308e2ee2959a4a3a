"""The same command under a 2-process launcher (torchrun, CPU, gloo): data-parallel, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.cli_helpers import assert_same_weights

VENV_BIN = Path(sys.executable).parent
WORKER = Path(__file__).parent / "fsdp_teacher_worker.py"
FIT_WORKER = Path(__file__).parent / "fit_worker.py"


def launch(args: list[str], cwd: Path, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N ARGS`; a launch that hangs (ranks out of step in a collective) fails the test
    after `timeout` seconds, its whole process group killed."""
    torchrun = VENV_BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this interpreter")
    # --standalone: a free port of its own, so a launch never meets one still closing from the previous test
    process = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", str(processes), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil  # an accelerate dependency

        # the workers first: they may sit in sessions of their own, and they hold the output pipes open
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        pytest.fail(f"the launch hung for {timeout} s: {' '.join(args[:3])}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def test_two_processes_train_data_parallel_and_only_rank0_writes(tiny_bert_dir, sentiment_csv, tmp_path):
    out = tmp_path / "ddp"
    result = launch(["-m", "lmcompress", "finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv),
                     "--out", str(out), "--epochs", "6", "--batch-size", "16", "--learning-rate", "3e-3",
                     "--max-length", "32", "--log-every-steps", "12", "--json"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # the learning-rate schedule spans the 36 steps the ranks take (it ran over 72 before: the whole loader's count)
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    lrs = {entry["step"]: entry["train/lr"] for entry in logged if "train/lr" in entry}
    assert sorted(lrs) == [12, 24, 36] and lrs[36] == 0.0
    assert lrs[12] == pytest.approx(3e-3 * (36 - 12) / (36 - 3))  # 3 warm-up steps (10%), then linear decay
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
    cache = tmp_path / "cache"

    def distill(out: Path, processes: int) -> dict:
        args = ["-m", "lmcompress", "distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1",
                "--hidden-weight", "1", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--cache-dir",
                str(cache), "--quiet"]
        result = launch(args, cwd=tmp_path, processes=processes, timeout=600) if processes > 1 else \
            subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=tmp_path)
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


def test_sharded_teacher_matches_the_whole_one_and_its_ranks_stay_in_step(tmp_path):
    """The --fsdp building blocks in 2 processes: forward equality, the cache-filling pass with an uneven share of
    rows, and a training batch cached on one rank only (tests/distributed/fsdp_teacher_worker.py)."""
    result = launch([str(WORKER), str(tmp_path / "cache")], cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK"


def _fsdp_pair(stage_args: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """The same 2-process distillation with the teacher whole in each process and sharded (--fsdp) -> manifests;
    the two students must be bit-identical."""
    manifests = []
    for name, flag in (("whole", []), ("sharded", ["--fsdp"])):
        out = tmp_path / name
        result = launch(["-m", "lmcompress", *stage_args, "--out", str(out), "--cache-dir", str(tmp_path / f"cache-{name}"),
                         "--quiet", *flag], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        manifests.append(json.loads((out / "lmcompress.json").read_text()))
    assert_same_weights(tmp_path / "whole", tmp_path / "sharded")
    whole, sharded = manifests
    assert whole["teacher_sharding"] is None and whole["processes"] == sharded["processes"] == 2
    info = sharded["teacher_sharding"]
    assert info["processes"] == 2 and info["params_per_process"] < 0.6 * info["params"], info
    return whole, sharded


def test_fsdp_teacher_run_live_teaches_the_same_student(tiny_teacher_run, tmp_path):
    """Attention-map transfer keeps the teacher live (no cache): the sharded teacher runs in every step, both ranks
    in step, over an odd number of rows (the last batch padded with repeats)."""
    whole, _ = _fsdp_pair(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1",
                           "--attention-weight", "1", "--epochs", "1", "--batch-size", "16",
                           "--max-train-examples", "97"], tmp_path)
    assert whole["teacher_cache"] is None


def test_fsdp_lm_teacher_with_top_k_cache_teaches_the_same_student(clm_teacher, corpus, tmp_path):
    """Causal-LM KD with the top-k cache: epoch 1 fills it while training (a rank whose batch is cached still runs
    the sharded teacher when the other's is not), epoch 2 reads it."""
    whole, sharded = _fsdp_pair(["distill-lm", "--teacher", str(clm_teacher), "--data", str(corpus),
                                 "--student", "gpt2-1l-32h-4a", "--top-k", "8", "--epochs", "2", "--max-length", "32",
                                 "--batch-size", "8", "--learning-rate", "3e-3"], tmp_path)
    assert sharded["teacher_cache"]["misses"] == whole["teacher_cache"]["misses"]
    assert sharded["teacher_cache"]["hits"] == whole["teacher_cache"]["hits"] > 0
    assert sharded["teacher_metrics"] == whole["teacher_metrics"]


def _fit_worker(mode: str, folder: Path) -> list[dict]:
    """One launch of tests/distributed/fit_worker.py -> each rank's outcome, rank 0 first."""
    result = launch([str(FIT_WORKER), mode, str(folder)], cwd=folder.parent, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = sorted((json.loads(line) for line in result.stdout.replace("}{", "}\n{").splitlines()
                       if line.startswith("{")), key=lambda o: o["rank"])
    assert [o["rank"] for o in outcomes] == [0, 1], result.stdout
    return outcomes


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_loss_on_one_rank_is_met_by_every_rank(tmp_path, policy):
    """Rank 1's loss turns NaN at its 3rd batch. Before, --nan-policy skip hung (rank 1 skipped the all-reduce rank 0
    waited in) and stop crashed rank 0 with a gloo traceback."""
    outcomes = _fit_worker(f"nan-{policy}", tmp_path / "run")
    if policy == "skip":  # 64 rows, 8 per batch: 4 batches per rank and epoch, the 3rd skipped on both ranks
        assert all(o == {"rank": o["rank"], "steps": 7, "skipped": 1} for o in outcomes), outcomes
    else:
        assert outcomes[1]["error"].startswith("loss became nan at step 3 (epoch 1)"), outcomes
        assert outcomes[0]["error"].startswith("loss became non-finite on another process"), outcomes


def test_sigterm_to_one_rank_checkpoints_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    """SIGTERM reaches rank 1 alone, inside its 3rd batch: both ranks finish that step, agree to stop, and checkpoint
    it; a second launch with resume ends with the weights of an uninterrupted launch, bitwise."""
    from safetensors.torch import load_file

    _fit_worker("straight", tmp_path / "straight")
    outcomes = _fit_worker("sigterm", tmp_path / "interrupted")
    assert all(o["error"].startswith("interrupted at step 3; checkpoint saved") for o in outcomes), outcomes
    assert [o["steps"] for o in _fit_worker("resume", tmp_path / "interrupted")] == [8, 8]
    straight = load_file(tmp_path / "straight" / "final.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "final.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
