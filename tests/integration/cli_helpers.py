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
    import lmcompress.train as train_mod

    real_backward = train_mod.Accelerator.backward
    calls = {"n": 0}

    def flaky_backward(self, loss, **kw):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_backward(self, loss, **kw)

    monkeypatch.setattr(train_mod.Accelerator, "backward", flaky_backward)
    return lambda: monkeypatch.setattr(train_mod.Accelerator, "backward", real_backward)
