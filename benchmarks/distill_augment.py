"""TinyBERT-style augmentation on a small labelled set: the same student distilled from the same teacher on N labelled
rows alone, with N x V word-replaced variants, and with unlabelled in-domain text, on the full test split.

    .venv/bin/python benchmarks/distill_augment.py --teacher runs/demo/teacher --rows 1000 --variants 8

Every contender: `lmcompress distill --student pick=0,1` (the teacher's first two layers), logit KD (T = 4, soft CE)
+ hidden MSE + 0.5 hard labels, bf16, 3 epochs, the first N training rows of the teacher's rotten-tomatoes split
(--max-train-examples N); validation and test rows are the teacher's. Writes
benchmarks/results/raw/distill_augment.json and benchmarks/results/distill_augment.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/demo/teacher")
    parser.add_argument("--rows", default="1000")
    parser.add_argument("--variants", default="8")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--work", default="runs/augment-bench")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    common = ["distill", "--teacher", args.teacher, "--student", "pick=0,1", "--max-train-examples", args.rows,
              "--epochs", args.epochs, "--batch-size", "32", "--learning-rate", "1e-4", "--temperature", "4",
              "--kd-kind", "ce", "--alpha", "0.5", "--hidden-weight", "1", "--layer-map", "1:1,2:2",
              "--precision", "bf16", "--teacher-precision", "bf16", "--cache-dir", str(work / "cache"),
              "--json", "--quiet"]
    contenders = {
        "labelled rows only": [],
        # a control for the augmented runs' extra optimizer steps: about as many steps on the labelled rows alone
        f"labelled rows only, {int(args.epochs) * (int(args.variants) + 1)} epochs": [
            "--epochs", str(int(args.epochs) * (int(args.variants) + 1))],
        f"+ word replacement x{args.variants}": ["--augment-replace", args.variants],
        "+ unlabelled rotten-tomatoes text": ["--augment", "rotten-tomatoes"],
    }
    lmcompress = str(Path(sys.executable).parent / "lmcompress")
    results: dict = {"machine": platform.platform(), "teacher": args.teacher, "rows": int(args.rows),
                     "contenders": {}}
    teacher_metrics = json.loads((Path(args.teacher) / "metrics.json").read_text())
    for name, extra in contenders.items():
        out = work / name.replace(" ", "-").replace("+", "plus").replace("/", "")
        cmd = [*common, *extra, "--out", str(out)]
        print("lmcompress " + " ".join(cmd), flush=True)
        start = time.perf_counter()
        done = subprocess.run([lmcompress, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        metrics = json.loads(done.stdout)
        manifest = json.loads((out / "lmcompress.json").read_text())
        results["contenders"][name] = {"command": "lmcompress " + " ".join(cmd), "test": metrics["metrics"],
                                       "augmentation": manifest.get("augmentation"),
                                       "train_rows": manifest["data"]["sizes"]["train"],
                                       "steps": manifest["train"]["steps"],
                                       "wall_s": round(time.perf_counter() - start, 1)}
        print(json.dumps(results["contenders"][name]), flush=True)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "distill_augment.json").write_text(json.dumps(results, indent=2) + "\n")
    teacher_acc = teacher_metrics["metrics"]["accuracy"]
    lines = [f"# Augmentation on {args.rows} labelled rows: rotten-tomatoes, teacher {args.teacher}", "",
             f"`python benchmarks/distill_augment.py --teacher {args.teacher} --rows {args.rows} --variants "
             f"{args.variants} --epochs {args.epochs}` on {results['machine']}. Teacher test accuracy "
             f"{teacher_acc:.4f} (trained on the whole split). Student: the teacher's first 2 layers; every contender "
             "the same losses and test rows, 3 epochs unless named; the commands are in the JSON.", "",
             "| contender | rows the teacher labels | optimizer steps | test accuracy | retention | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, res in results["contenders"].items():
        extra_rows = (res["augmentation"] or {}).get("rows", 0)
        lines.append(f"| {name} | {res['train_rows']} + {extra_rows} | {res['steps']} | {res['test']['accuracy']:.4f} | "
                     f"{res['test']['accuracy'] / teacher_acc:.1%} | {res['wall_s']:.0f} |")
    (RESULTS / "distill_augment.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "distill_augment.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
