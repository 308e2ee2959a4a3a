"""A sharded teacher (`--fsdp`) vs a whole copy per process: the same 2-process distillation, side by side.

    .venv/bin/python benchmarks/fsdp_teacher.py --processes 2 --steps 12

Both runs are `torchrun --nproc_per_node N -m lmcompress distill-lm` with smollm2-135m (Llama, 134.5 M params,
30 layers) teaching gpt2-4l-256h by exact forward KL over the vocabulary (no cache: the teacher runs every step), on
enwiki-sample, one after the other on this machine. Measured per run: the teacher's weights held per process (from
lmcompress.json), the peak and the median resident memory of each worker process (polled every 0.2 s with psutil;
on CPU the whole teacher is loaded before it is sharded, so the peak includes the load), training throughput, and
whether the two students are bitwise equal. On a GPU machine the same script measures NCCL. Writes
benchmarks/results/raw/fsdp_teacher.json and benchmarks/results/fsdp_teacher.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

RESULTS = Path(__file__).parent / "results"


def run_polled(cmd: list[str]) -> tuple[subprocess.CompletedProcess, dict[int, list[int]], float]:
    """Run `cmd`, sampling the resident memory of its descendant processes -> (result, {pid: [rss bytes]}, wall s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    samples: dict[int, list[int]] = {}
    while proc.poll() is None:
        try:
            for child in parent.children(recursive=True):
                try:
                    if "lmcompress" in " ".join(child.cmdline()):
                        samples.setdefault(child.pid, []).append(child.memory_info().rss)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), samples, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/fsdp-teacher"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    stage = ["-m", "lmcompress", "distill-lm", "--teacher", "smollm2-135m", "--student", "gpt2-4l-256h",
             "--data", "enwiki-sample", "--max-documents", "20", "--max-length", "128",
             "--max-validation-examples", "16", "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--checkpoint-every-steps", "1000", "--log-every-steps", "1", "--quiet"]
    rows = []
    for name, flag in (("whole teacher per process", []), ("sharded teacher (--fsdp)", ["--fsdp"])):
        out = args.out / ("sharded" if flag else "whole")
        cmd = [torchrun, "--nproc_per_node", str(args.processes), *stage, "--out", str(out), *flag]
        result, samples, wall = run_polled(cmd)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
        manifest = json.loads((out / "lmcompress.json").read_text())
        sharding = manifest.get("teacher_sharding") or {}
        workers = [s for s in samples.values() if len(s) > 5]  # the ranks (not short-lived helpers)
        rows.append({
            "name": name, "processes": manifest["processes"], "steps": manifest["train"]["steps"],
            "teacher_params_per_process": sharding.get("params_per_process"), "teacher_params": sharding.get("params"),
            "peak_rss_mb": [round(max(s) / 2**20) for s in workers],
            "median_rss_mb": [round(statistics.median(s) / 2**20) for s in workers],
            "examples_per_s": manifest["train"]["examples_per_s"], "loop_wall_s": manifest["train"]["wall_time_s"],
            "command_wall_s": round(wall, 1),
            "validation_perplexity": json.loads((out / "metrics.json").read_text())["metrics"]["perplexity"],
            "command": " ".join(cmd),
        })
    whole, sharded = (load_file(str(args.out / name / "model.safetensors")) for name in ("whole", "sharded"))
    differing = [k for k in whole if not torch.equal(whole[k], sharded[k])]
    rows[0]["teacher_params_per_process"] = rows[0]["teacher_params"] = rows[1]["teacher_params"]  # whole: all of it
    base = rows[0]["examples_per_s"]
    for row in rows:
        row["throughput_vs_whole"] = round(row["examples_per_s"] / base, 2)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cores": psutil.cpu_count(),
               "device": "cuda" if torch.cuda.is_available() else "cpu", "rows": rows,
               "students_bitwise_equal": not differing, "tensors_differing": differing}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "fsdp_teacher.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Sharded teacher (--fsdp) vs a whole copy per process", "", f"Command: `{results['command']}`  ",
          f"{results['cores']} cores, {results['device']}; smollm2-135m teaches gpt2-4l-256h by exact KD (teacher live "
          f"every step), {args.steps} steps of {args.batch_size} blocks of 128 tokens per process (a systems check: the "
          "student's validation perplexity after so few steps only shows that the two runs agree).", "",
          "| run | processes | teacher weights per process | peak RSS per process MB | median RSS MB | examples/s "
          "| vs whole | loop wall s | student perplexity |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['processes']} | {r['teacher_params_per_process']:,} | "
           f"{', '.join(map(str, r['peak_rss_mb']))} | {', '.join(map(str, r['median_rss_mb']))} | "
           f"{r['examples_per_s']} | {r['throughput_vs_whole']}x | {r['loop_wall_s']} | "
           f"{r['validation_perplexity']:.2f} |" for r in rows]
    md += ["", f"Students bitwise equal: {results['students_bitwise_equal']}"
           + (f" (differing: {', '.join(differing)})" if differing else "") + "."]
    (RESULTS / "fsdp_teacher.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if results["students_bitwise_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
