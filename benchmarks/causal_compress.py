"""Causal-LM compression on this machine's CPU: smollm2-135m pruned (Minitron-style) and recovered by distillation,
against the same shape from random init, with and without the teacher, on the same blocks, steps and validation set.

    .venv/bin/python benchmarks/causal_compress.py --out runs/causal-bench [--documents 16] [--layers 20] [--ffn 0.5]

(1) `lmcompress prune-lm --model smollm2-135m --layers L --ffn F ... --baseline`: the pruned + distilled student,
    and (`--baseline`) the pruned shape from random init trained without a teacher (OUT/pruned-baseline);
(2) `lmcompress distill-lm --student RANDOM-INIT`: the pruned shape from random init, distilled the same way (its
    teacher top-k comes from the cache (1) filled);
then the teacher and the pruned student's generation speed (batch 1, greedy, KV cache) in interleaved rounds.
Writes benchmarks/results/raw/causal_compress.json and benchmarks/results/causal_compress.md, with lscpu.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from cli_runs import LMCOMPRESS, output_root, run_command  # benchmarks/cli_runs.py (this script's folder)

RESULTS = Path(__file__).parent / "results"


def _random_init(pruned: Path, folder: Path, seed: int) -> Path:
    """The pruned run's architecture with random weights and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    shutil.rmtree(folder, ignore_errors=True)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pruned)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(pruned).save_pretrained(folder)
    return folder


def _speed(pruned: Path, new_tokens: int, rounds: int) -> tuple[dict, dict]:
    """Teacher and pruned student side by side: forward latency at batch 1 and 32 on validation blocks, and
    generation (batch 1, greedy, KV cache), both in interleaved rounds -> (latency, generation)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmcompress.measure import generation_speed
    from lmcompress.models.load import load_lm_teacher
    from lmcompress.data.pretraining import collator
    from lmcompress.runkinds.lm import latency_batch, run_validation_set
    from lmcompress.timing import interleaved_rounds, quartiles

    _, tokenizer, data, _ = run_validation_set(pruned)
    models = {"teacher": load_lm_teacher("smollm2-135m", "clm").model.eval(),
              "pruned": AutoModelForCausalLM.from_pretrained(pruned).eval()}
    collate = collator(tokenizer, "clm")
    batches = {size: latency_batch(collate, data.validation, size) for size in (1, 32)}
    calls = {(name, size): (lambda m=model, b=batches[size]: m(**b)) for name, model in models.items()
             for size in (1, 32)}
    with torch.inference_mode():
        times = interleaved_rounds(calls, rounds, warmup=1)
    latency = {f"{name} b{size}": [round(x, 1) for x in quartiles(t)] for (name, size), t in times.items()}
    prompt = torch.tensor(data.validation[0]["input_ids"][:32]).unsqueeze(0)
    return latency, generation_speed(models, prompt, new_tokens, rounds)


def _row(name: str, label: str, folder: Path, command: list[str], wall: float | None) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    manifest = json.loads((folder / "lmcompress.json").read_text())
    train = manifest["train"]
    return {"run": name, "model": label, "command": " ".join(["lmcompress", *command[1:]]),
            "perplexity": metrics["metrics"]["perplexity"], "token_accuracy": metrics["metrics"]["token_accuracy"],
            "perplexity_before": metrics["metrics_before"]["perplexity"], "params": metrics["params"],
            "latency_ms": metrics["latency_ms"], "steps": train["steps"], "train_wall_s": train["wall_time_s"],
            "command_wall_s": wall, "validation_fingerprint": metrics["validation_fingerprint"],
            "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                        for h in train["history"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/causal-bench")
    parser.add_argument("--documents", type=int, default=16, help="first N enwiki-sample articles (of 106)")
    parser.add_argument("--layers", type=int, default=20, help="layers kept of the teacher's 30")
    parser.add_argument("--ffn", default="0.5", help="share of FFN neurons removed")
    parser.add_argument("--heads", default="0", help="share of query heads removed in each KV group")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--batch-size", default="16")
    parser.add_argument("--max-length", default="128")
    parser.add_argument("--learning-rate", default="3e-4")
    parser.add_argument("--top-k", default="64")
    parser.add_argument("--validation", default="64", help="validation blocks")
    parser.add_argument("--calibration", default="128", help="blocks that score importance")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reuse", action="store_true", help="keep complete runs under --out")
    args = parser.parse_args()
    exe, out = LMCOMPRESS, output_root(args.out, args.reuse)
    common = ["--data", "enwiki-sample", "--max-documents", str(args.documents), "--epochs", args.epochs,
              "--batch-size", args.batch_size, "--max-length", args.max_length, "--learning-rate", args.learning_rate,
              "--max-validation-examples", args.validation, "--checkpoint-every-steps", "100000", "--quiet"]
    prune_cmd = [exe, "prune-lm", "--model", "smollm2-135m", "--layers", str(args.layers), "--ffn", args.ffn,
                 "--heads", args.heads, "--top-k", args.top_k, "--calibration-examples", args.calibration,
                 "--baseline", "--out", str(out / "pruned"), *common]
    print("(1) pruned + distilled, and the same shape from random init without a teacher", flush=True)
    prune_wall = run_command(prune_cmd, out / "pruned", args.reuse)
    init = _random_init(out / "pruned", out / "random-init", seed=0)
    kd_cmd = [exe, "distill-lm", "--teacher", "smollm2-135m", "--student", str(init), "--top-k", args.top_k,
              "--out", str(out / "random-kd"), *common]
    print("(2) the same shape from random init, distilled", flush=True)
    kd_wall = run_command(kd_cmd, out / "random-kd", args.reuse)
    baseline_cmd = [exe, "pretrain", "--model", "(the pruned shape, random init)", "--objective", "clm", *common]
    rows = [_row("pruned-distilled", "pruned + distilled", out / "pruned", prune_cmd, prune_wall),
            _row("random-kd", "random init + KD", out / "random-kd", kd_cmd, kd_wall),
            _row("random", "random init, no teacher", out / "pruned-baseline", baseline_cmd, None)]
    if len({row["validation_fingerprint"] for row in rows}) != 1:
        raise SystemExit("the runs were scored on different validation blocks")
    manifest = json.loads((out / "pruned" / "lmcompress.json").read_text())
    print("(3) forward latency and generation speed, teacher vs pruned, interleaved", flush=True)
    latency, generation = _speed(out / "pruned", args.new_tokens, rounds=5)
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    teacher = {"perplexity": manifest["teacher_metrics"]["perplexity"],
               "token_accuracy": manifest["teacher_metrics"]["token_accuracy"], "params": 134_515_008}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": torch.get_num_threads(),
              "lscpu": lscpu, "data": manifest["data"], "pruning": manifest["pruning"], "teacher": teacher,
              "runs": rows, "latency_ms_q1_median_q3": latency, "generation": generation,
              "teacher_cache": manifest.get("teacher_cache")}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "causal_compress.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "causal_compress.md").write_text(_markdown(result, args))
    print((RESULTS / "causal_compress.md").read_text())
    return 0


def _markdown(result: dict, args) -> str:
    teacher, rows, gen, pruning = result["teacher"], result["runs"], result["generation"], result["pruning"]
    cpu = next((line.split(":", 1)[1].strip() for line in result["lscpu"].splitlines()
                if line.startswith("Model name")), "?")
    data = result["data"]
    lines = ["# Causal-LM compression: smollm2-135m pruned and recovered, vs the same shape from random init", "",
             f"`{result['command']}` on {cpu}, {result['threads']} threads. enwiki-sample, first {args.documents} "
             f"articles: {data['examples']['train']} training blocks of {args.max_length} tokens, "
             f"{data['examples']['validation']} validation blocks from held-out articles; {rows[0]['steps']} steps of "
             f"batch {args.batch_size} for every student (same blocks, order, seed, learning rate).", "",
             f"Pruned: layers {pruning['layers']} (kept {pruning['kept_layers']}), query heads "
             f"{pruning['heads_per_layer']}, KV heads {pruning['kv_heads_per_layer']}, hidden {pruning['hidden']}, "
             f"FFN {pruning['ffn_per_layer']}; params {pruning['params']} ({100 * pruning['params_ratio']:.0f}%).", "",
             "| model | params | validation perplexity | before training | next-token accuracy | train wall s |",
             "|---|---:|---:|---:|---:|---:|",
             f"| smollm2-135m (teacher, GGUF Q4_1 dequantised) | {teacher['params']:,} | {teacher['perplexity']:.1f} | "
             f"- | {teacher['token_accuracy']:.3f} | - |"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['params']:,} | {row['perplexity']:.1f} | "
                     f"{row['perplexity_before']:.1f} | {row['token_accuracy']:.3f} | {row['train_wall_s']:.0f} |")
    lines += ["", f"Pruned + distilled perplexity / teacher's: {rows[0]['perplexity'] / teacher['perplexity']:.2f}x; "
              f"random init + KD: {rows[1]['perplexity'] / teacher['perplexity']:.1f}x; random init alone: "
              f"{rows[2]['perplexity'] / teacher['perplexity']:.1f}x.", "",
              f"Generation at batch 1 (greedy, KV cache, {gen['teacher']['prompt_tokens']}-token prompt, "
              f"{gen['teacher']['new_tokens']} new tokens, {gen['teacher']['rounds']} interleaved rounds; median and "
              "interquartile range):", "", "| model | time to first token ms | decode tokens/s |", "|---|---:|---:|"]
    for name in ("teacher", "pruned"):
        g = gen[name]
        lines.append(f"| {name} | {g['ttft_ms']:.1f} ({g['ttft_iqr_ms'][0]:.1f}-{g['ttft_iqr_ms'][1]:.1f}) | "
                     f"{g['decode_tokens_per_s']:.1f} ({g['decode_iqr'][0]:.1f}-{g['decode_iqr'][1]:.1f}) |")
    lat = result["latency_ms_q1_median_q3"]
    lines += ["", "Forward pass on validation blocks of the same length, interleaved rounds, median ms (interquartile "
              "range):", "", "| model | batch 1 | batch 32 |", "|---|---:|---:|"]
    for name in ("teacher", "pruned"):
        b1, b32 = lat[f"{name} b1"], lat[f"{name} b32"]
        lines.append(f"| {name} | {b1[1]:.1f} ({b1[0]:.1f}-{b1[2]:.1f}) | {b32[1]:.1f} ({b32[0]:.1f}-{b32[2]:.1f}) |")
    lines += ["", "Validation perplexity along the way (step: perplexity):", ""]
    for row in rows:
        path = ", ".join(f"{h['step']}: {h['perplexity']:.1f}" for h in row["history"])
        lines.append(f"- {row['model']}: 0: {row['perplexity_before']:.1f}, {path}")
    lines += ["", "Commands:", ""] + [f"- {row['model']}: `{row['command']}`" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
