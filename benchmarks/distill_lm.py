"""Causal-LM distillation on this machine's CPU: smollm2-135m (Llama, GGUF) -> a small GPT-2 sharing its tokenizer,
against the same GPT-2 trained on the same blocks for the same steps without a teacher.

    .venv/bin/python benchmarks/distill_lm.py --out runs/distill-lm-bench [--documents 40] [--epochs 2]

(1) `lmcompress distill-lm --teacher smollm2-135m --student gpt2-4l-256h` (forward KL over the teacher's top-k
    logits, cached: epoch 1 runs the teacher, later epochs read the cache);
(2) `lmcompress pretrain --model gpt2-4l-256h --tokenizer RUN1 --objective clm`: the baseline, same architecture,
    tokenizer, blocks, order, steps, learning rate and seed, cross-entropy on the text only.
Both are scored on the same fixed validation blocks (fingerprints checked); the teacher is scored on them too, and
the latency of all three is measured in this process (batch 1 and 32, median). Writes
benchmarks/results/raw/distill_lm.json and benchmarks/results/distill_lm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _run(cmd: list[str], reuse: Path | None = None) -> tuple[dict, float | None]:
    """Run an lmcompress command -> (its --json summary, wall seconds); with `reuse`, a complete run made by the same
    command earlier is read back instead."""
    print("    " + " ".join(cmd), flush=True)
    if reuse is not None and (reuse / "lmcompress.json").is_file():
        manifest = json.loads((reuse / "lmcompress.json").read_text())
        if manifest.get("complete"):
            print("    (complete run reused)", flush=True)
            return json.loads((reuse / "metrics.json").read_text()), None
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(done.returncode)
    return json.loads(done.stdout), wall


def _teacher_latency(distilled: Path, repeats: int) -> dict[str, float]:
    import torch

    from lmcompress.measure import measure_latency
    from lmcompress.models.load import load_lm_teacher
    from lmcompress.data.pretraining import collator
    from lmcompress.runkinds.lm import latency_batch, run_validation_set

    cfg, tokenizer, data, _ = run_validation_set(distilled)
    teacher = load_lm_teacher("smollm2-135m", "clm").model
    collate = collator(tokenizer, "clm")
    with torch.inference_mode():
        return measure_latency(teacher, lambda size: latency_batch(collate, data.validation, size), repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/distill-lm-bench")
    parser.add_argument("--student", default="gpt2-4l-256h")
    parser.add_argument("--documents", type=int, default=40, help="first N enwiki-sample articles (the corpus has 106)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", default="5e-4")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--validation", type=int, default=128, help="validation blocks")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="read back complete runs under --out instead of "
                        "training them again (e.g. after a failure in the reporting step)")
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "lmcompress")
    out = Path(args.out)
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
    common = ["--data", "enwiki-sample", "--max-documents", str(args.documents), "--objective", "clm",
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--learning-rate", args.learning_rate, "--max-validation-examples", str(args.validation),
              "--checkpoint-every-steps", "100000", "--json", "--quiet"]
    print("(1) distilled from smollm2-135m", flush=True)
    distilled, wall_distilled = _run([exe, *command("distilled", args, out, common)],
                                     out / "distilled" if args.reuse else None)
    print("(2) same GPT-2 without a teacher", flush=True)
    baseline, wall_baseline = _run([exe, *command("baseline", args, out, common)],
                                   out / "baseline" if args.reuse else None)
    if distilled["validation_fingerprint"] != baseline["validation_fingerprint"]:
        raise SystemExit("the two runs were scored on different validation blocks")
    manifest = json.loads((out / "distilled" / "lmcompress.json").read_text())
    base_manifest = json.loads((out / "baseline" / "lmcompress.json").read_text())
    teacher_latency = _teacher_latency(out / "distilled", args.latency_repeats)
    teacher = {"perplexity": manifest["teacher_metrics"]["perplexity"],
               "token_accuracy": manifest["teacher_metrics"]["token_accuracy"], "params": 134_515_008,
               "latency_ms": teacher_latency}
    rows = []
    for name, metrics, m, wall in (("distilled", distilled, manifest, wall_distilled),
                                   ("baseline", baseline, base_manifest, wall_baseline)):
        rows.append({"run": name, "command": " ".join(["lmcompress", *command(name, args, out, common)]),
                     "perplexity": metrics["metrics"]["perplexity"],
                     "token_accuracy": metrics["metrics"]["token_accuracy"],
                     "perplexity_before": metrics["metrics_before"]["perplexity"], "params": metrics["params"],
                     "latency_ms": metrics["latency_ms"], "steps": m["train"]["steps"],
                     "train_wall_s": m["train"]["wall_time_s"], "command_wall_s": round(wall, 1) if wall else None,
                     "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                                 for h in m["train"]["history"]]})
    import torch

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
              "cpu_threads": torch.get_num_threads(), "data": manifest["data"], "teacher": teacher, "runs": rows,
              "teacher_cache": manifest.get("teacher_cache"),
              "perplexity_ratio_distilled_vs_baseline": round(rows[0]["perplexity"] / rows[1]["perplexity"], 4)}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "distill_lm.json").write_text(json.dumps(result, indent=2) + "\n")
    d, b = rows
    lines = [f"# Causal-LM distillation: smollm2-135m -> {args.student}", "",
             f"`{result['command']}` on {result['machine']}, {result['cpu_threads']} threads. enwiki-sample, first "
             f"{args.documents} articles: {manifest['data']['examples']['train']} training blocks of "
             f"{args.max_length} tokens, {manifest['data']['examples']['validation']} validation blocks from held-out "
             f"articles; {d['steps']} steps of batch {args.batch_size} for both students (same blocks, order, seed, "
             "learning rate).", "",
             "| model | params | validation perplexity | next-token accuracy | ms b1 | ms b32 | train wall s |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| smollm2-135m (teacher, GGUF Q4_1 dequantised) | {teacher['params']:,} | {teacher['perplexity']:.1f} | "
             f"{teacher['token_accuracy']:.3f} | {teacher_latency['batch1']:.1f} | {teacher_latency['batch32']:.1f} | - |"]
    for row in rows:
        label = f"{args.student} distilled (top-{args.top_k} forward KL)" if row["run"] == "distilled" \
            else f"{args.student} without a teacher"
        lines.append(f"| {label} | {row['params']:,} | {row['perplexity']:.1f} | {row['token_accuracy']:.3f} | "
                     f"{row['latency_ms']['batch1']:.1f} | {row['latency_ms']['batch32']:.1f} | "
                     f"{row['train_wall_s']:.0f} |")
    cache = result["teacher_cache"] or {}
    lines += ["", f"Distilled / baseline perplexity: {result['perplexity_ratio_distilled_vs_baseline']:.3f}. "
              f"Teacher cache: {cache.get('misses', 0)} blocks computed, {cache.get('hits', 0)} read back.", "",
              "Validation perplexity along the way (step: perplexity):", ""]
    for row in rows:
        path = ", ".join(f"{h['step']}: {h['perplexity']:.1f}" for h in row["history"])
        lines.append(f"- {row['run']}: 0: {row['perplexity_before']:.1f}, {path}")
    lines += ["", "Commands:", ""] + [f"- {row['run']}: `{row['command']}`" for row in rows]
    (RESULTS / "distill_lm.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "distill_lm.md").read_text())
    return 0


def command(name: str, args, out: Path, common: list[str]) -> list[str]:
    if name == "distilled":
        return ["distill-lm", "--teacher", "smollm2-135m", "--student", args.student, "--out", str(out / "distilled"),
                "--top-k", str(args.top_k), "--teacher-precision", "bf16", *common]
    return ["pretrain", "--model", args.student, "--tokenizer", str(out / "distilled"), "--out", str(out / "baseline"),
            *common]


if __name__ == "__main__":
    raise SystemExit(main())
