"""Collects the figures of benchmarks/gpu_check.sh into gpu_check.json and gpu_check.md.

    python benchmarks/gpu_summary.py WORK_DIR OUT_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _auto(report: Path) -> dict | None:
    """The search's verdict and its line saying where each model trained and where it was timed."""
    raw = read_json(report / "report.json")
    return {"verdict": raw["auto"]["verdict"], "where": raw["auto"]["where"]} if raw else None


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = {}
    for line in (work / "steps.txt").read_text().splitlines():
        name, rc, wall = line.split()
        steps[name] = {"exit_status": int(rc), "wall_s": float(wall)}
    runs = {name: read_json(work / name / "metrics.json")
            for name in ("teacher", "student", "gpt2-teacher", "gpt2-student", "student-ddp")}
    log = (out / "gpu_check.log").read_text(errors="replace")
    summary = {
        "gpu": (out / "gpu.txt").read_text().strip(),
        "command": "bash benchmarks/gpu_check.sh",
        "steps": steps,
        "metrics": {k: (v or {}).get("metrics") for k, v in runs.items()},
        "nccl_seen_in_log": "NCCL INFO" in log,
        "cuda_latency": read_json(out / "cuda_latency.json"),
        "compare": read_json(out / "compare_report.json"),
        "auto": _auto(work / "auto" / "report"),
        "nvidia_smi": subprocess.run(["nvidia-smi", "-q", "-d", "MEMORY"], capture_output=True, text=True).stdout[-800:],
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check ({summary['gpu']})", "", "Command: `bash benchmarks/gpu_check.sh`", "",
             "| step | exit | wall s | metrics |", "|---|---|---|---|"]
    for name, step in steps.items():
        run = {"finetune": "teacher", "distill": "student", "pretrain_gpt2": "gpt2-teacher",
               "distill_lm": "gpt2-student", "torchrun_nccl": "student-ddp"}.get(name)
        metrics = summary["metrics"].get(run) if run else None
        shown = ", ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items() if isinstance(v, (int, float)))
        lines.append(f"| {name} | {step['exit_status']} | {step['wall_s']} | {shown} |")
    latency = summary["cuda_latency"]
    if latency:
        lines += ["", f"CUDA latency ({latency['statistic']}), batch x 64 tokens:", "",
                  "| run | precision | batch | ms median (q1-q3) | speedup vs reference fp32 |", "|---|---|---|---|---|"]
        for row in latency["rows"]:
            ms, sp = row["ms"], row["speedup_vs_reference_fp32"]
            lines.append(f"| {Path(row['run']).name} | {row['precision']} | {row['batch']} | "
                         f"{ms['median']:.3f} ({ms['q1']:.3f}-{ms['q3']:.3f}) | {sp['median']:.2f}x |")
    if summary["auto"]:
        lines += ["", f"auto: {summary['auto']['verdict']}", "", str(summary["auto"]["where"])]
    lines += ["", f"NCCL initialised in the torchrun step: {summary['nccl_seen_in_log']}"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
