"""Word spans for the teacher to label, at equal speed: the same donor student with and without `--augment-spans`.

    .venv/bin/python benchmarks/augment_spans.py --teacher runs/mpnet-teacher-full --out runs/augment-spans [--reuse]
        [--pooled-spans 2 --pooled-weight 1]  (arms that add the pooled-output loss, at these span counts)
        [--student FOLDER --hidden-weight 1 --int8 onnx-int8 --results NAME]  (another student, e.g. an `auto`
        candidate's pruned start OUT/candidates/SHAPE/init, with `auto`'s loss for a cut of the teacher; or
        `minilm-l6` with the hidden-state loss from `mpnet-base`, whose tokenizers cut text into the same pieces)

Every arm is `lmcompress distill --student minilm-l6` (or --student) from the teacher with `auto`'s options for a
donor with its own tokenizer (4 epochs at 1e-4, logit KD T=4, alpha 0.5, batch 32), on every labelled row, then
`quantize --method openvino-int8` (or --int8: the runtime `auto` chose for this student) and `evaluate --split
validation` of the int8 model. The arms differ only in the texts the teacher labels beside the labelled rows: none, or
N word spans of every labelled text (`--augment-spans N`), and in `--pooled-weight` (the arms named by
`--pooled-spans` also match the teacher's mean-pooled last hidden state through a learned projection, the one
intermediate loss that works across the two tokenizers). The same architecture runs at the same speed, so no timing is
needed to compare them.
Retention is against the teacher's own PyTorch fp32 scores. Writes benchmarks/results/raw/augment_spans.json and
benchmarks/results/augment_spans.md (NAME.json and NAME.md with --results), with the processor.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from cli_runs import LMCOMPRESS, output_root, run_command

from lmcompress.machine import describe_processor, processor
from lmcompress.runs.manifest import read_manifest
from lmcompress.search.run import best_score

RESULTS = Path(__file__).parent / "results"
OPTIONS = ["--data", "rotten-tomatoes", "--max-length", "64", "--epochs", "4",
           "--learning-rate", "1e-4", "--temperature", "4", "--alpha", "0.5", "--batch-size", "32", "--quiet"]


def _accuracy(folder: Path) -> float:
    return json.loads((folder / "metrics.json").read_text())["metrics"]["accuracy"]


def _arm(args: argparse.Namespace, root: Path, spans: int, pooled_weight: float) -> dict:
    """One student: distilled, int8, scored on the validation and test rows."""
    teacher, reuse = args.teacher, args.reuse
    name = (f"spans-{spans}" if spans else "labelled-only") + (f"-pooled-{pooled_weight:g}" if pooled_weight else "")
    student, int8, validation = root / name, root / f"{name}-int8", root / f"{name}-int8-validation"
    extra = ["--student", args.student] + (["--hidden-weight", f"{args.hidden_weight:g}"] if args.hidden_weight else [])
    extra += ["--augment-spans", str(spans)] if spans else []
    extra += ["--pooled-weight", f"{pooled_weight:g}"] if pooled_weight else []
    commands = [[LMCOMPRESS, "distill", "--teacher", str(teacher), *OPTIONS, *extra, "--out", str(student)],
                [LMCOMPRESS, "quantize", "--model", str(student), "--method", args.int8, "--data",
                 "rotten-tomatoes", "--max-length", "64", "--out", str(int8), "--quiet"],
                [LMCOMPRESS, "evaluate", "--model", str(int8), "--split", "validation", "--no-latency", "--out",
                 str(validation), "--quiet"]]
    walls = [run_command(command, out, reuse) for command, out in zip(commands, (student, int8, validation))]
    manifest = json.loads((student / "lmcompress.json").read_text())
    return {"spans_per_text": spans, "pooled_weight": pooled_weight,
            "augmentation_rows": (manifest.get("augmentation") or {}).get("rows", 0),
            "labelled_rows": manifest["data"]["sizes"]["train"],
            "fp32": {"validation": best_score(read_manifest(student).train, "accuracy"),
                     "test": _accuracy(student)},
            "int8": {"validation": _accuracy(validation), "test": _accuracy(int8)},
            "train_wall_s": manifest["train"]["wall_time_s"], "command_wall_s": walls,
            "commands": [" ".join(command[1:]) for command in commands]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--out", default="runs/augment-spans")
    parser.add_argument("--spans", type=int, nargs="+", default=[0, 2, 4], help="spans per text of each arm")
    parser.add_argument("--pooled-spans", type=int, nargs="*", default=[],
                        help="spans per text of the arms that add the pooled-output loss")
    parser.add_argument("--pooled-weight", type=float, default=1.0, help="its weight in those arms")
    parser.add_argument("--student", default="minilm-l6", help="the student every arm starts from (distill --student)")
    parser.add_argument("--hidden-weight", type=float, default=0.0,
                        help="hidden-state loss (auto's loss for a cut of the teacher: 1); a student with another "
                             "tokenizer takes it only where both cut every text into the same pieces")
    parser.add_argument("--int8", default="openvino-int8", choices=["openvino-int8", "onnx-int8"],
                        help="the int8 runtime (auto's choice for this student on this processor)")
    parser.add_argument("--results", default="augment_spans", help="name of the results files")
    parser.add_argument("--reuse", action="store_true", help="keep complete runs in --out")
    args = parser.parse_args()
    root = output_root(args.out, args.reuse)
    arms = [_arm(args, root, spans, 0.0) for spans in args.spans]
    arms += [_arm(args, root, spans, args.pooled_weight) for spans in args.pooled_spans]
    teacher = {"validation": best_score(read_manifest(args.teacher).train, "accuracy"),
               "test": _accuracy(args.teacher)}
    pooled = (f" --pooled-spans {' '.join(map(str, args.pooled_spans))} --pooled-weight {args.pooled_weight:g}"
              if args.pooled_spans else "")
    student = "" if args.student == "minilm-l6" else f" --student {args.student}"
    student += f" --hidden-weight {args.hidden_weight:g}" if args.hidden_weight else ""
    student += "" if args.int8 == "openvino-int8" else f" --int8 {args.int8}"
    results = "" if args.results == "augment_spans" else f" --results {args.results}"
    record = {"command": f"python benchmarks/augment_spans.py --teacher {args.teacher} --spans "
                         f"{' '.join(map(str, args.spans))}{pooled}{student}{results}", "processor": processor(),
              "python": platform.python_version(), "teacher": teacher, "student": args.student,
              "hidden_weight": args.hidden_weight, "int8": args.int8, "arms": arms}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.results}.json").write_text(json.dumps(record, indent=2) + "\n")
    loss = "logit KD" + (f" + hidden-state MSE (weight {args.hidden_weight:g})" if args.hidden_weight else "")
    lines = [f"# Word spans for the teacher to label, at equal speed ({describe_processor(record['processor'])})", "",
             f"`{record['command']}`. Teacher (PyTorch fp32): validation {teacher['validation']:.4f}, test "
             f"{teacher['test']:.4f}. Student `{args.student}`, 4 epochs, {loss}; retention of the teacher's "
             "score.", "",
             f"| teacher-labelled rows | pooled loss | validation fp32 | test fp32 | validation {args.int8} "
             f"| test {args.int8} | training s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for arm in arms:
        seen = f"{arm['labelled_rows']:,}" + (f" + {arm['augmentation_rows']:,} spans ({arm['spans_per_text']} per "
                                              "text)" if arm["spans_per_text"] else "")
        scores = [arm[kind][split] / teacher[split] for kind in ("fp32", "int8")
                  for split in ("validation", "test")]
        pooled_cell = f"{arm.get('pooled_weight', 0.0):g}" if arm.get("pooled_weight") else "-"
        lines.append(f"| {seen} | {pooled_cell} | " + " | ".join(f"{s:.1%}" for s in scores) + f" | {arm['train_wall_s']:.0f} |")
    (RESULTS / f"{args.results}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
