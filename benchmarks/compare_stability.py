"""Do two `lmcompress compare` runs over the same models agree? Runs the report twice and sets the speedups side by side.

    .venv/bin/python benchmarks/compare_stability.py runs/demo/teacher runs/demo/distilled runs/demo/distilled-int8 \
        --backends auto --out runs/stability

Each pass is a full `compare` (scoring, warm-up, interleaved rounds); the second starts when the first has ended, as
a user re-running the report would. For every row and batch size: both speedups and their relative difference; the
goal is within ±15% on a shared machine. Also lists each row's backend in both passes (`--backends auto` chooses
the fastest per pass). Writes benchmarks/results/raw/compare_stability.json and
benchmarks/results/compare_stability.md (or `--name`) with the processor (lscpu).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lmcompress.config import CompareConfig
from lmcompress.machine import processor
from lmcompress.measure import LATENCY_BATCHES
from lmcompress.stages.compare import compare

RESULTS = Path(__file__).parent / "results"
GOAL = 0.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--backends", choices=("run", "auto"), default="auto")
    parser.add_argument("--latency-repeats", type=int, default=CompareConfig.latency_repeats)
    parser.add_argument("--out", type=Path, default=Path("runs/stability"))
    parser.add_argument("--name", default="compare_stability", help="results file name (results/raw/NAME.json, results/NAME.md)")
    args = parser.parse_args()
    passes = [compare(CompareConfig(runs=args.runs, out=str(args.out / f"pass{i}"), overwrite=True,
                                    backends=args.backends, latency_repeats=args.latency_repeats))
              for i in (1, 2)]
    rows = []
    for first, second in zip(passes[0]["rows"], passes[1]["rows"]):
        row = {"name": first["name"], "backend": [first.get("backend"), second.get("backend")]}
        for size in LATENCY_BATCHES:
            a, b = first[f"speedup_b{size}"], second[f"speedup_b{size}"]
            row[f"speedup_b{size}"] = [a, b]
            row[f"difference_b{size}"] = round(abs(b - a) / a, 4)
        rows.append(row)
    worst = max(r[f"difference_b{s}"] for r in rows for s in LATENCY_BATCHES)
    command = "python benchmarks/compare_stability.py " + " ".join(sys.argv[1:])
    payload = {"command": command, "processor": processor(), "goal": GOAL, "worst_difference": worst,
               "within_goal": worst <= GOAL, "threads": passes[0]["setup"]["threads"],
               "lscpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout, "rows": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    cpu = processor()
    lines = ["# Two compare passes over the same models", "", f"Command: `{command}`  ",
             f"Processor: {cpu['model']} ({', '.join(cpu['isa'])}), {payload['threads']} threads; "
             f"{args.latency_repeats} interleaved rounds per pass (3x at batch 1).", "",
             "| model | backend (pass 1 / 2) | speedup b1 (1 / 2) | diff | speedup b32 (1 / 2) | diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['backend'][0]} / {r['backend'][1]} | {r['speedup_b1'][0]:.2f}x / "
                     f"{r['speedup_b1'][1]:.2f}x | {r['difference_b1']:.1%} | {r['speedup_b32'][0]:.2f}x / "
                     f"{r['speedup_b32'][1]:.2f}x | {r['difference_b32']:.1%} |")
    lines += ["", f"Largest difference: {worst:.1%} (goal: within {GOAL:.0%}): "
              f"{'met' if worst <= GOAL else 'not met'}.", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
