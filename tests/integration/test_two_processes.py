"""Two processes on one output: the second stops with one line naming the first and touches nothing.

The first process is real (a `lmcompress finetune`, or a Python process holding the same OS lock a stage takes);
it is paused with SIGSTOP while the second runs, so the test does not depend on how fast either one is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmcompress.distillation.cache import TeacherCache
from lmcompress.errors import LmcError

from .cli_helpers import one_error_line, run_cli

HOLD = "import sys; from pathlib import Path; from lmcompress.runs.files import hold_output; " \
       "hold_output(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()"


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def holder():
    """`hold(target)` -> a second Python process that holds the OS lock of `target` until the test ends."""
    started = []

    def hold(target: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process

    yield hold
    for process in started:
        process.stdin.close()
        process.wait(timeout=30)


def test_second_finetune_on_one_out_stops_and_the_first_completes(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--out", str(out),
            "--epochs", "2", "--batch-size", "16", "--max-length", "32", "--log-every-steps", "1", "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "lmcompress", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        _wait_for(tmp_path / ".run.partial" / "train_log.jsonl", first)  # the first is training
        first.send_signal(signal.SIGSTOP)
        before = sorted(p.name for p in (tmp_path / ".run.partial").iterdir())
        code, _, err = run_cli(args, capsys)
        assert code == 1
        one_error_line(err, f"--out {out} is being written by process {first.pid}")
        assert sorted(p.name for p in (tmp_path / ".run.partial").iterdir()) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert json.loads((out / "lmcompress.json").read_text())["complete"] is True
    assert not (tmp_path / ".run.lock").exists()  # the lock file goes with the run's commit


def test_second_auto_on_one_out_stops_before_touching_it(tiny_teacher_run, tmp_path, capsys, holder):
    out = tmp_path / "search"
    out.mkdir()
    (out / "search.jsonl").write_text("")  # what a search in progress has written so far
    first = holder(out)
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), "--min-speedup", "2",
                            "--overwrite"], capsys)
    assert code == 1
    one_error_line(err, f"--out {out} (an auto search) is being written by process {first.pid}")
    assert [p.name for p in out.iterdir()] == ["search.jsonl"]  # --overwrite removed nothing


def test_second_process_filling_one_teacher_cache_stops(tmp_path, holder):
    ids = [[1, 2, 3], [4, 5]]
    cache = TeacherCache(tmp_path, "teacherA", ids, num_classes=2)
    folder = cache.folder
    cache.logits[0] = [0.5, -0.5]
    del cache  # this process lets the entry go; another one takes it
    first = holder(folder)
    with pytest.raises(LmcError, match=f"the teacher cache {folder} is being written by process {first.pid}"):
        TeacherCache(tmp_path, "teacherA", ids, num_classes=2)
    assert np.load(folder / "logits.npy")[0].tolist() == [0.5, -0.5]  # not truncated by a second "fresh" start
