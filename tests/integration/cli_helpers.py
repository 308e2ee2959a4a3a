"""Calling the CLI in-process and checking its one-line errors."""

from __future__ import annotations

from lmcompress.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """-> (exit code, stdout, stderr) of `lmcompress ARGS`, usage errors (SystemExit) included."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments: str) -> None:
    """stderr ends with exactly one `lmcompress: error:` line containing every fragment, with no traceback; the
    only other lines allowed are warnings logged before it (e.g. "the test rows differ from training")."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lmcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("WARNING") or line.startswith(" ") or line == errors[0] for line in lines), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def interrupt_backward_at(monkeypatch, call: int):
    """Make the `call`-th backward pass raise KeyboardInterrupt (as Ctrl-C/SIGTERM would); returns `undo()`."""
    import lmcompress.training.loop as train_mod

    real_backward = train_mod.Accelerator.backward
    calls = {"n": 0}

    def flaky_backward(self, loss, **kw):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_backward(self, loss, **kw)

    monkeypatch.setattr(train_mod.Accelerator, "backward", flaky_backward)
    return lambda: monkeypatch.setattr(train_mod.Accelerator, "backward", real_backward)


def interrupt_then_resume(monkeypatch, capsys, args: list[str], at_backward: int) -> None:
    """Run `lmcompress ARGS`, interrupted during the `at_backward`-th backward pass (as Ctrl-C would), then again
    with --resume; the second run must succeed."""
    undo = interrupt_backward_at(monkeypatch, at_backward)
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "interrupted at step" in err, err
    undo()
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err


def assert_same_weights(a_dir, b_dir) -> None:
    """Two runs saved bit-identical weights."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def cached_distill_matches_live(teacher, tmp_path, capsys, student_args: list[str]) -> dict:
    """Distil twice into fresh runs sharing one teacher cache: the first run computes the teacher once (its pass
    before training) and reads it back in every epoch, the second only reads; both save the very same weights.
    -> the first run's stats."""
    import json

    cache = tmp_path / "cache"
    stats = []
    for name in ("first", "second"):
        code, _, err = run_cli(["distill", "--teacher", str(teacher), "--out", str(tmp_path / name), "--cache-dir",
                                str(cache), *student_args, "--quiet"], capsys)
        assert code == 0, err
        stats.append(json.loads((tmp_path / name / "lmcompress.json").read_text())["teacher_cache"])
    n = stats[0]["examples"]
    assert stats[0]["misses"] == n and stats[0]["hits"] > 0 and stats[1]["misses"] == 0, stats
    assert_same_weights(tmp_path / "first", tmp_path / "second")
    return stats[0]


SHRINK_STAGES = [  # (arguments, largest allowed drop of the main metric vs the parent)
    (["export"], 1e-6),  # fp32 ONNX: the same predictions
    (["quantize", "--method", "openvino-int8", "--calibration-examples", "16"], 0.15),
    (["quantize", "--method", "onnx-int8"], 0.15),
    (["prune", "--heads", "0.5", "--ffn", "0.5", "--epochs", "4", "--learning-rate", "5e-3"], 0.25),
]


def shrink_keeps_the_task(parent, tmp_path, capsys, args: list[str], max_drop: float) -> None:
    """`lmcompress STAGE --model parent` makes a run of the same task whose main metric is at most max_drop below the
    parent's, and `evaluate` scores the new run (PyTorch, int8 or ONNX) to the same value."""
    import json

    out = tmp_path / "shrunk"
    code, _, err = run_cli([args[0], "--model", str(parent), "--out", str(out), *args[1:], "--quiet"], capsys)
    assert code == 0, err
    before = json.loads((parent / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    main = before["main_metric"]
    assert after["task"] == before["task"] and after["main_metric"] == main
    assert after["metrics"][main] >= before["metrics"][main] - max_drop, (before["metrics"], after["metrics"])
    if args[0] == "prune":
        assert after["params"] < 0.8 * before["params"]
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"][main] == after["metrics"][main]
