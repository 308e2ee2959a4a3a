"""What the benchmarks that drive the CLI share: the command, a fresh output folder, running one command (or keeping
its complete run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_command(cmd: list[str], out: Path, reuse: bool) -> float | None:
    """Run an lmcompress command (offline) -> wall seconds; with `reuse`, a complete run at `out` is kept instead."""
    print("    " + " ".join(cmd), flush=True)
    if reuse and (out / "metrics.json").is_file():
        print("    (complete run reused)", flush=True)
        return None
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(done.returncode)
    return round(time.perf_counter() - start, 1)


LMCOMPRESS = str(Path(sys.executable).parent / "lmcompress")  # the CLI of the interpreter running the benchmark


def output_root(out: str, reuse: bool) -> Path:
    """The benchmark's output folder: emptied first, unless complete runs in it are to be reused."""
    root = Path(out)
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
    return root
