"""Data-parallel training throughput: the same `lmcompress finetune` in 1 process vs N processes under torchrun.

    .venv/bin/python benchmarks/data_parallel.py --rows 2048 --processes 2

Fine-tunes `minilm-l6` on the first --rows training rows of `rotten-tomatoes` (max length 64, batch 16 per process,
1 epoch) once as a plain process using every core, once as N gloo processes (`torchrun --nproc_per_node N`, which
sets one thread per process), one after the other on this machine. Throughput is the loop's examples/s from
each run's lmcompress.json; on a GPU machine the same script measures NCCL data parallelism. Writes
benchmarks/results/raw/data_parallel.json and benchmarks/results/data_parallel.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/multiprocess"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    bin_dir = Path(sys.executable).parent
    stage = ["finetune", "--model", "minilm-l6", "--data", "rotten-tomatoes", "--max-train-examples", str(args.rows),
             "--max-length", "64", "--epochs", "1", "--batch-size", "16", "--checkpoint-every-steps", "1000",
             "--quiet"]
    cores = os.cpu_count() or 1
    runs = {
        "1 process": [str(bin_dir / "lmcompress"), *stage, "--out", str(args.out / "single")],
        f"{args.processes} processes": [str(bin_dir / "torchrun"), "--nproc_per_node", str(args.processes), "-m",
                                        "lmcompress", *stage, "--out", str(args.out / "multi")],
    }
    rows = []
    for name, cmd in runs.items():
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
        folder = Path(cmd[cmd.index("--out") + 1])
        manifest = json.loads((folder / "lmcompress.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        rows.append({"name": name, "processes": manifest.get("processes", 1), "steps": manifest["train"]["steps"],
                     "examples_per_s": manifest["train"]["examples_per_s"],
                     "loop_wall_s": manifest["train"]["wall_time_s"], "command_wall_s": round(time.perf_counter() - start, 1),
                     "test_accuracy": metrics["metrics"]["accuracy"], "command": " ".join(cmd)})
    base = rows[0]["examples_per_s"]
    for row in rows:
        row["throughput_vs_1_process"] = round(row["examples_per_s"] / base, 2)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cores": cores, "rows": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "data_parallel.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Data-parallel fine-tuning: 1 process vs torchrun", "", f"Command: `{results['command']}`  ",
          f"{cores} cores; minilm-l6 on {args.rows} rotten-tomatoes rows, 1 epoch, batch 16 per process.", "",
          "| run | processes | optimizer steps | examples/s | vs 1 process | loop wall s | test accuracy |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['processes']} | {r['steps']} | {r['examples_per_s']} | {r['throughput_vs_1_process']}x | "
           f"{r['loop_wall_s']} | {r['test_accuracy']:.4f} |" for r in rows]
    (RESULTS / "data_parallel.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
