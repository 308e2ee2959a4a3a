"""Where a student starts, at equal speed: a cut of the fine-tuned teacher vs a pre-trained donor of the same shape.

    .venv/bin/python benchmarks/donor_vs_cut.py --teacher runs/demo/teacher --out runs/donor-vs-cut
    .venv/bin/python benchmarks/donor_vs_cut.py --set mpnet --teacher runs/mpnet-teacher --out runs/donor-vs-cut-mpnet

`--set demo` (the minilm-l6 demo teacher): pairs of students with the same architecture (the same speed by
construction; the report times them anyway): `layers=3` of the teacher vs `minilm-l3` whole (both
L3-H384-A12-F1536), and `layers=2` vs `minilm-l3;layers=2`, all with the teacher's tokenizer; one more run adds
augmentation (`--augment-replace 1`: one word-replaced variant per training text, labelled by the teacher) to the
2-layer donor, the second ablation. `--set mpnet` (an mpnet-base teacher, 109.5M): a 3-layer, 384-wide cut of the
teacher (weights sliced by magnitude) vs `minilm-l3` (same depth and width; its own tokenizer), and `minilm-l6`.
`--set mpnet-augment`: `minilm-l6` from the mpnet-base teacher with and without `--augment rotten-tomatoes` (the
corpus's other texts, unlabelled, that are not validation or test texts, labelled by the teacher).
Every student gets 4 epochs at 1e-4, logit KD T=4, alpha 0.5, the teacher's cache, and the hidden-state MSE where
the tokenizers match (as `auto` does). Then `lmcompress compare` scores the teacher and every student on the same
test rows and times them side by side in one process; `--int8` adds each student's ONNX Runtime dynamic int8
(`lmcompress quantize --method onnx-int8`) to that comparison. Writes benchmarks/results/raw/donor_vs_cut_SET.json and
benchmarks/results/donor_vs_cut_SET.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from cli_runs import LMCOMPRESS, output_root, run_command

from lmcompress.machine import processor
from lmcompress.runs.manifest import read_manifest
from lmcompress.search.run import best_score

RESULTS = Path(__file__).parent / "results"
LOSS = ["--temperature", "4", "--alpha", "0.5", "--epochs", "4", "--learning-rate", "1e-4",
        "--checkpoint-every-steps", "200", "--quiet"]
HIDDEN = ["--hidden-weight", "1"]  # only where student and teacher share the tokenizer (token positions line up)
SETS = {  # set -> name -> (--student, extra options, what it is)
    "demo": {
        "cut-L3": ("layers=3", HIDDEN, "teacher's layers 1, 3, 5 (of 0-5)"),
        "donor-L3": ("minilm-l3", HIDDEN, "minilm-l3 whole"),
        "cut-L2": ("layers=2", HIDDEN, "teacher's layers 2, 5"),
        "donor-L2": ("minilm-l3;layers=2", HIDDEN, "minilm-l3's layers 0, 2"),
        "donor-L2-augmented": ("minilm-l3;layers=2", [*HIDDEN, "--augment-replace", "1"],
                               "as donor-L2, plus one word-replaced variant of each training text"),
    },
    "mpnet": {
        # as `auto` cuts: prune by importance (layers, half the heads and FFN, no recovery), then distil
        "cut-L3-H384": ("PRUNE:--layers 3 --heads 0.5 --ffn 0.5", HIDDEN, "the teacher pruned to 3 layers, half its "
                                                                          "heads (hidden 384) and FFN"),
        "donor-minilm-l3": ("minilm-l3", [], "minilm-l3 whole (logits only: its own tokenizer)"),
        "donor-minilm-l6": ("minilm-l6", [], "minilm-l6 whole (logits only: its own tokenizer)"),
    },
    "mpnet-augment": {  # the second ablation at equal speed: the same donor, with and without more teacher labels
        "donor-minilm-l6": ("minilm-l6", [], "minilm-l6 whole, the labelled rows only"),
        "donor-minilm-l6-augmented": ("minilm-l6", ["--augment", "rotten-tomatoes"],
                                      "minilm-l6 whole, plus every other rotten-tomatoes text labelled by the teacher"),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--set", default="demo", choices=list(SETS))
    parser.add_argument("--out", default="runs/donor-vs-cut")
    parser.add_argument("--only", nargs="*", help="students of the set to make (default: all)")
    parser.add_argument("--reuse", action="store_true", help="keep complete runs in --out")
    parser.add_argument("--int8", action="store_true", help="compare each student's ONNX Runtime int8 as well")
    parser.add_argument("--max-train-examples", type=int, help="distil on this many training rows (default: the "
                                                                 "teacher's)")
    args = parser.parse_args()
    students = {name: SETS[args.set][name] for name in args.only or SETS[args.set]}
    root = output_root(args.out, args.reuse)
    rows = {}
    for name, (student, extra, what) in students.items():
        if student.startswith("PRUNE:"):  # the student starts from the teacher pruned by importance
            init = root / f"{name}-init"
            run_command([LMCOMPRESS, "prune", "--model", str(args.teacher), *student[len("PRUNE:"):].split(),
                         "--recovery", "none", "--out", str(init), "--quiet"], init, args.reuse)
            student = str(init)
        command = [LMCOMPRESS, "distill", "--teacher", str(args.teacher), "--student", student, "--out",
                   str(root / name), *LOSS, *extra]
        if args.max_train_examples:
            command += ["--max-train-examples", str(args.max_train_examples)]
        print(f"{name}: {what}", flush=True)
        wall = run_command(command, root / name, args.reuse)
        manifest = read_manifest(root / name)
        rows[name] = {"student": student, "what": what, "command": " ".join(command[1:]), "wall_s": wall,
                      "best_validation": best_score(manifest.train, "accuracy"),
                      "augmentation_rows": (json.loads((root / name / "lmcompress.json").read_text())
                                            .get("augmentation") or {}).get("rows", 0)}
    compared_names = list(students)
    for name in students if args.int8 else ():
        run_command([LMCOMPRESS, "quantize", "--model", str(root / name), "--method", "onnx-int8", "--out",
                     str(root / f"{name}-int8"), "--quiet"], root / f"{name}-int8", args.reuse)
        compared_names.append(f"{name}-int8")
    report = root / "report"
    run_command([LMCOMPRESS, "compare", str(args.teacher), *(str(root / n) for n in compared_names), "--names",
                 ",".join(["teacher", *compared_names]), "--out", str(report), "--overwrite", "--quiet"], report,
                False)
    compared = json.loads((report / "report.json").read_text())
    keys = ("params", "value", "retention", "speedup_b32", "speedup_b1", "latency_ms_b32")
    for row in compared["rows"]:
        if row["name"] in rows:
            rows[row["name"]] |= {k: row[k] for k in keys}
        elif row["name"].removesuffix("-int8") in rows:
            rows[row["name"].removesuffix("-int8")]["int8"] = {k: row.get(k) for k in (*keys, "speedup_iqr_b32")}
    teacher = compared["rows"][0]
    record = {"processor": processor(), "python": platform.python_version(), "teacher": str(args.teacher),
              "teacher_test": teacher["value"], "teacher_latency_ms_b32": teacher["latency_ms_b32"], "students": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"donor_vs_cut_{args.set}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Donor vs cut at equal shape ({record['processor']})", "",
             f"Teacher test accuracy {teacher['value']:.4f}. Command: `.venv/bin/python benchmarks/donor_vs_cut.py "
             f"--set {args.set} --teacher {args.teacher}"
             f"{' --int8' if args.int8 else ''}"
             f"{f' --max-train-examples {args.max_train_examples}' if args.max_train_examples else ''}`.", "",
             "| student | start | params | best validation acc | test acc | test retention | speedup b32 | "
             "teacher-labelled extra rows | wall s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['what']} | {row['params'] / 1e6:.1f}M | {row['best_validation']:.4f} | "
                     f"{row['value']:.4f} | "
                     f"{row['retention']:.1%} | {row['speedup_b32']:.2f}x | {row['augmentation_rows']} | "
                     f"{row['wall_s'] if row['wall_s'] is not None else '-'} |")
    int8 = {name: row["int8"] for name, row in rows.items() if "int8" in row}
    if int8:
        lines += ["", "ONNX Runtime dynamic int8 of each student, in the same comparison:", "",
                  "| student (int8) | test acc | test retention | speedup b32 (IQR) |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['value']:.4f} | {r['retention']:.1%} | {r['speedup_b32']:.1f}x "
                  f"({r['speedup_iqr_b32'][0]:.1f}-{r['speedup_iqr_b32'][1]:.1f}x) |" for name, r in int8.items()]
    (RESULTS / f"donor_vs_cut_{args.set}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
