"""Distil a table of students from one fine-tuned teacher, then measure them all side by side in one process.

    .venv/bin/python benchmarks/distill_students.py --teacher runs/demo/teacher --out runs/students

Each student: `lmcompress distill` with logit KD (T=4, alpha 0.5) + hidden-state MSE (learned projection when
narrower), teacher cache on. With --general-steps N, one more student follows TinyBERT's two phases: general
distillation first (`lmcompress distill-lm`: minilm-l6, not the fine-tuned teacher, teaches the 2L-192H shape on
enwiki-sample through MiniLM relations + hidden-state MSE + the student's own MLM loss; no task data), then the same
task distillation as the others, starting from that student instead of the teacher's sliced weights.
Afterwards the teacher and every student are scored on the same test rows and timed
at batch 1 and 32 (sequence length = the teacher's max length, median of repeats, same threads), so the latency
ratios come from one process. Writes benchmarks/results/raw/distill_students.json and benchmarks/results/distill_students.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lmcompress.config import DataConfig, DistillConfig, DistillLossConfig, TrainConfig, from_dict
from lmcompress.data import load_task
from lmcompress.stages.distill import distill
from lmcompress.measure import count_params, latency_for_texts, weights_size_bytes
from lmcompress.runkinds.task import score_split
from lmcompress.models.load import load_tokenizer, load_trained_classifier
from lmcompress.runs.manifest import read_manifest
from lmcompress.runs.manifest import is_complete

RESULTS = Path(__file__).parent / "results"
STUDENTS = {
    "4L-384H": "layers=4",
    "2L-384H": "layers=2",
    "2L-192H": "layers=2;hidden=192;heads=6;ffn=768",
    "1L-384H": "layers=1",
}


GENERAL = "2L-192H+GD"
GENERAL_COMMAND: list[str] = []


def general_distillation(args) -> tuple[Path, float]:
    """minilm-l6 -> the 2L-192H shape on raw English text (MiniLM relations + hidden MSE + MLM), via distill-lm."""
    from lmcompress.cli import main as cli

    out = args.out / "general-2L-192H"
    GENERAL_COMMAND[:] = ["distill-lm", "--teacher", "minilm-l6", "--student", STUDENTS["2L-192H"], "--objective", "mlm",
                          "--data", "enwiki-sample", "--alpha", "1", "--minilm-weight", "1", "--hidden-weight", "1",
                          "--max-length", "128", "--batch-size", "32", "--max-steps", str(args.general_steps),
                          "--learning-rate", "5e-4", "--checkpoint-every-steps", "500", "--out", str(out), "--quiet"]
    if is_complete(out):
        return out, json.loads((out / "lmcompress.json").read_text())["train"]["wall_time_s"]
    start = time.perf_counter()
    if cli([*GENERAL_COMMAND, "--overwrite"]) != 0:
        raise SystemExit("general distillation failed")
    return out, round(time.perf_counter() - start, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher"))
    parser.add_argument("--out", type=Path, default=Path("runs/students"))
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--only", nargs="*", help="student names to run (default: all)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--general-steps", type=int, default=0, help="add the general-distilled 2L-192H student")
    args = parser.parse_args()
    students = dict(STUDENTS)
    general_wall = None
    if args.general_steps:
        general, general_wall = general_distillation(args)
        students[GENERAL] = str(general)

    wall: dict[str, float] = {}
    for name, spec in students.items():
        if args.only and name not in args.only:
            continue
        out = args.out / name
        if is_complete(out):
            wall[name] = json.loads((out / "lmcompress.json").read_text())["train"]["wall_time_s"]
            continue
        cfg = DistillConfig(teacher=str(args.teacher), student=spec, out=str(out), overwrite=True,
                            teacher_precision=args.precision,
                            train=TrainConfig(epochs=args.epochs, batch_size=32, learning_rate=1e-4,
                                              precision=args.precision, checkpoint_every_steps=500),
                            loss=DistillLossConfig(temperature=4.0, alpha=0.5, hidden_weight=1.0))
        start = time.perf_counter()
        distill(cfg)
        wall[name] = round(time.perf_counter() - start, 1)

    recorded = read_manifest(args.teacher).data_options
    data_cfg = from_dict(DataConfig, recorded)
    task = load_task(data_cfg)
    tokenizer = load_tokenizer(args.teacher)
    texts = task.splits["test"]["text"].tolist()
    rows = []
    for name, folder in [("teacher", args.teacher)] + [(n, args.out / n) for n in wall]:
        model = load_trained_classifier(folder, task.labels, False).eval()
        scores = score_split(model, tokenizer, task, "test", data_cfg.max_length, 64)
        latency = latency_for_texts(model, tokenizer, texts, None, data_cfg.max_length, args.repeats, None)
        rows.append({"name": name, "spec": students.get(name, "fine-tuned teacher"), "params": count_params(model),
                     "size_mb": round(weights_size_bytes(folder) / 1e6, 1), "accuracy": scores["accuracy"],
                     "latency_ms_b1": latency["latency_ms"]["batch1"], "latency_ms_b32": latency["latency_ms"]["batch32"],
                     "distill_wall_s": wall.get(name)})
    teacher = rows[0]
    for row in rows:
        row["retention"] = round(row["accuracy"] / teacher["accuracy"], 4)
        row["speedup_b1"] = round(teacher["latency_ms_b1"] / row["latency_ms_b1"], 2)
        row["speedup_b32"] = round(teacher["latency_ms_b32"] / row["latency_ms_b32"], 2)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "teacher": str(args.teacher),
               "epochs": args.epochs, "precision": args.precision, "seq_len": data_cfg.max_length,
               "threads": torch.get_num_threads(), "machine": platform.platform(), "torch": torch.__version__,
               "test_rows": len(texts), "rows": rows, "general_distillation_wall_s": general_wall,
               "general_distillation_command": GENERAL_COMMAND if args.general_steps else None}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "distill_students.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Distilled students of the rotten-tomatoes teacher", "",
          f"Command: `{results['command']}`  ",
          f"{results['machine']}, {results['threads']} threads, torch {results['torch']}; latency = median of "
          f"{args.repeats} forward passes at sequence length {data_cfg.max_length}, all models in one process; "
          f"{len(texts)} test rows; {args.epochs:g} distillation epochs, precision {args.precision}.", "",
          "| model | spec | params | size MB | test acc | retention | ms b1 | ms b32 | speedup b32 | distill wall s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | `{r['spec']}` | {r['params']:,} | {r['size_mb']} | {r['accuracy']:.4f} | "
                  f"{r['retention']:.1%} | {r['latency_ms_b1']:.1f} | {r['latency_ms_b32']:.1f} | {r['speedup_b32']:.2f}x | "
                  f"{r['distill_wall_s'] if r['distill_wall_s'] is not None else '-'} |")
    if args.general_steps:
        md += ["", f"{GENERAL}: general distillation `lmcompress {' '.join(GENERAL_COMMAND)}` ({general_wall:.0f} s, "
               "not in the distill wall column), then task distillation like the others from that student."]
    (RESULTS / "distill_students.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
