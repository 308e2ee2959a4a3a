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
    """stderr is exactly one `lmcompress: error:` line containing every fragment, and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmcompress: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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
