"""kill -9 a real distillation at a random step, resume it, and compare with the same run left alone.

    .venv/bin/python benchmarks/kill_resume.py --teacher runs/demo/teacher --out runs/kill-resume

Both runs are the same `lmcompress distill` command (student `layers=2;hidden=192;heads=6;ffn=768`, KD + hidden MSE,
teacher cache on, checkpoint every 10 steps) on the first --rows training rows of the teacher's data, each in its own
process with its own cache folder. The second is sent SIGKILL once its training log passes a step drawn at random
(seeded), then started again with exactly the same command, as a scheduler requeueing a preempted job does (more
kills with --kills). The final weights are compared tensor by tensor (bitwise) and the test metrics exactly; the
last (completing) run's wall time is set against the uninterrupted run's, beside the share of steps it had left.
Writes benchmarks/results/raw/kill_resume.json and benchmarks/results/kill_resume.md.

With --processes N both runs are the same command under `torchrun --standalone --nproc_per_node N` (data parallel),
and a kill is SIGKILL to the launcher and every worker at once, as a scheduler ending a job does; results go to
benchmarks/results/kill_resume_{N}proc.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from lmcompress.machine import processor

RESULTS = Path(__file__).parent / "results"


def command(teacher: Path, out: Path, cache: Path, rows: int, epochs: float, processes: int = 1) -> list[str]:
    bin_dir = Path(sys.executable).parent
    launcher = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", str(processes), "-m", "lmcompress"] \
        if processes > 1 else [str(bin_dir / "lmcompress")]
    cmd = [*launcher, "distill", "--teacher", str(teacher), "--student", "layers=2;hidden=192;heads=6;ffn=768",
           "--out", str(out), "--cache-dir", str(cache), "--max-train-examples", str(rows), "--epochs", str(epochs),
           "--hidden-weight", "1", "--checkpoint-every-steps", "10", "--log-every-steps", "1", "--json"]
    return cmd


def last_logged_step(partial: Path) -> int:
    log = partial / "train_log.jsonl"
    if not log.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def run_killed(cmd: list[str], partial: Path, kill_at: int) -> float:
    """Start `cmd`, SIGKILL it (with any workers it launched) once the log reaches `kill_at`; -> seconds it ran."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None:
        if last_logged_step(partial) >= kill_at:
            workers = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)
            for worker in workers:
                with contextlib.suppress(psutil.Error):
                    worker.kill()
            proc.wait()
            return time.perf_counter() - start
        time.sleep(0.05)
    raise SystemExit(f"the run finished before step {kill_at}; choose a smaller step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher"))
    parser.add_argument("--out", type=Path, default=Path("runs/kill-resume"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--kills", type=int, default=2, help="how many times to kill the second run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--processes", type=int, default=1, help="data-parallel processes (torchrun) per run")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    batches = math.ceil(args.rows * 0.8 / 32)  # ~80% of rows are training rows after the split
    total_steps = int(math.ceil(batches / args.processes) * args.epochs)  # each rank takes 1/N of the batches

    start = time.perf_counter()
    straight = subprocess.run(command(args.teacher, args.out / "straight", args.out / "cache-straight", args.rows,
                                      args.epochs, args.processes), capture_output=True, text=True)
    if straight.returncode != 0:
        raise SystemExit(straight.stderr)
    straight_s = time.perf_counter() - start

    rng = random.Random(args.seed)
    killed_dir, partial = args.out / "killed", args.out / ".killed.partial"
    cache = args.out / "cache-killed"
    kills = []
    lower = 11  # after the first checkpoint (step 10), so there is something to resume from
    for _k in range(args.kills):
        kill_at = rng.randint(lower, total_steps - 5)
        ran = run_killed(command(args.teacher, killed_dir, cache, args.rows, args.epochs, args.processes),
                         partial, kill_at)
        state = json.loads((partial / "checkpoint" / "state.json").read_text())
        kills.append({"killed_after_step": last_logged_step(partial), "target_step": kill_at, "ran_s": round(ran, 1),
                      "checkpoint_step": state["loop"]["global_step"]})
        lower = kill_at + 1
    start = time.perf_counter()
    resumed = subprocess.run(command(args.teacher, killed_dir, cache, args.rows, args.epochs, args.processes),
                             capture_output=True, text=True)
    if resumed.returncode != 0:
        raise SystemExit(resumed.stderr)
    resumed_s = time.perf_counter() - start

    a = load_file(str(args.out / "straight" / "model.safetensors"))
    b = load_file(str(killed_dir / "model.safetensors"))
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    max_diff = max((float((a[k].float() - b[k].float()).abs().max()) for k in a), default=0.0)
    ma = json.loads((args.out / "straight" / "metrics.json").read_text())["metrics"]
    mb = json.loads((killed_dir / "metrics.json").read_text())["metrics"]
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "distill_command": " ".join(command(args.teacher, Path("OUT"), Path("CACHE"), args.rows, args.epochs,
                                            args.processes)),
        "steps": (steps := json.loads((killed_dir / "lmcompress.json").read_text())["train"]["steps"]),
        "kills": kills, "straight_wall_s": round(straight_s, 1), "resumed_wall_s": round(resumed_s, 1),
        "resumed_steps_left": steps - kills[-1]["checkpoint_step"],
        "resumed_share_of_steps": round((steps - kills[-1]["checkpoint_step"]) / steps, 3),
        "resumed_share_of_wall": round(resumed_s / straight_s, 3),
        "tensors": len(a), "tensors_differing": differing, "max_abs_weight_diff": max_diff,
        "bitwise_equal": not differing and a.keys() == b.keys(),
        "metrics_straight": ma, "metrics_resumed": mb, "metrics_equal": ma == mb,
        "threads": torch.get_num_threads(), "processor": processor(),
    }
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    name = "kill_resume" if args.processes == 1 else f"kill_resume_{args.processes}proc"
    (RESULTS / "raw" / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# kill -9 and resume vs an uninterrupted distillation", "",
          f"Command: `{results['command']}` on {results['processor']['model']} "
          f"({', '.join(results['processor']['isa'])}, {results['processor']['cores']} cores)  ",
          f"Distillation: `{results['distill_command']}` ({results['steps']} optimizer steps, {args.processes} "
          f"process{'es' if args.processes > 1 else ''}).", "",
          "| kill | target step | last logged step | resumed from checkpoint step |", "|---|---|---|---|"]
    md += [f"| {i + 1} | {k['target_step']} | {k['killed_after_step']} | {k['checkpoint_step']} |"
           for i, k in enumerate(kills)]
    md += ["", f"The completing run (the same command again) had {results['resumed_steps_left']} of {steps} steps "
           f"left ({results['resumed_share_of_steps']:.0%}) and took {resumed_s:.0f} s against {straight_s:.0f} s "
           f"uninterrupted ({results['resumed_share_of_wall']:.0%}; loading, the final scoring and latency are "
           "fixed costs of both).", f"Final weights: {len(a) - len(differing)}/{len(a)} tensors bitwise equal "
           f"(max |diff| {max_diff:.3g}); test metrics equal: {results['metrics_equal']} "
           f"({ma} vs {mb})."]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if results["bitwise_equal"] and results["metrics_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
