"""The four real pre-training runs of the pre-training issue, on this machine's CPU, one after another.

    .venv/bin/python benchmarks/pretrain.py --out runs/pretrain-bench [--steps 300] [--only a b]

(a) minilm-l6 (pretrained encoder, fresh MLM/NSP heads tied to its embeddings): continued MLM+NSP on
    enwiki-sample, validation MLM perplexity before and after;
(b) a small Chinese BERT from scratch (bert-4l-256h, character-level WordPiece vocab trained on the corpus, jieba
    whole-word masking, MLM+NSP) on peoples-daily, validation perplexity as it falls;
(c) a small GPT-2 from scratch (gpt2-4l-256h, byte-level BPE vocab trained on the corpus), CLM on enwiki-sample;
(d) a small ALBERT from scratch (albert-4l-256h, WordPiece vocab, n-gram masking up to 3), MLM+SOP on enwiki-sample,
    with SOP accuracy.
Each is the real `lmcompress pretrain` command in its own process (printed in the results); validation is scored
every --eval-every steps on the run's fixed masked validation set. Writes benchmarks/results/raw/pretrain.json and
benchmarks/results/pretrain.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

RUNS = {
    "a": ("minilm-l6 continued MLM+NSP, enwiki-sample",
          ["--model", "minilm-l6", "--objective", "mlm+nsp", "--data", "enwiki-sample", "--learning-rate", "1e-4"]),
    "b": ("Chinese BERT from scratch (char vocab, jieba WWM), MLM+NSP, peoples-daily",
          ["--model", "bert-4l-256h", "--train-tokenizer", "8000", "--objective", "mlm+nsp", "--data", "peoples-daily",
           "--chinese-words", "jieba", "--learning-rate", "5e-4"]),
    "c": ("GPT-2 from scratch (BPE vocab), CLM, enwiki-sample",
          ["--model", "gpt2-4l-256h", "--train-tokenizer", "8000", "--objective", "clm", "--data", "enwiki-sample",
           "--learning-rate", "5e-4"]),
    "d": ("ALBERT from scratch (WordPiece vocab, n-gram masking), MLM+SOP, enwiki-sample",
          ["--model", "albert-4l-256h", "--train-tokenizer", "8000", "--objective", "mlm+sop", "--data", "enwiki-sample",
           "--max-ngram", "3", "--learning-rate", "5e-4"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrain-bench")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "lmcompress")
    out = Path(args.out)
    rows = []
    for key in args.only:
        title, flags = RUNS[key]
        run = out / key
        shutil.rmtree(run, ignore_errors=True)
        cmd = [exe, "pretrain", *flags, "--out", str(run), "--max-steps", str(args.steps),
               "--eval-every-steps", str(args.eval_every), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--checkpoint-every-steps", "1000", "--json", "--quiet"]
        print(f"({key}) {title}\n    {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        metrics = json.loads(done.stdout)
        manifest = json.loads((run / "lmcompress.json").read_text())
        history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                   for h in manifest["train"]["history"]]
        row = {"run": key, "title": title, "command": " ".join(cmd[1:]), "params": metrics["params"],
               "before": metrics["metrics_before"], "after": metrics["metrics"], "history": history,
               "train_wall_s": manifest["train"]["wall_time_s"], "command_wall_s": round(wall, 1),
               "tokens_per_s": manifest["train"]["tokens_per_s"], "data": manifest["data"]}
        rows.append(row)
        print(f"    perplexity {row['before']['perplexity']:.1f} -> {row['after']['perplexity']:.1f}, "
              f"{row['tokens_per_s']:.0f} tokens/s, {wall:.0f} s", flush=True)
    import platform

    import torch

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
              "cpu_threads": torch.get_num_threads(), "runs": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "pretrain.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Pre-training runs ({args.steps} steps each, batch {args.batch_size} x {args.max_length} tokens)", "",
             f"`{result['command']}` on {result['machine']}, {result['cpu_threads']} threads.", "",
             "| run | params | validation perplexity before → after | other metric | train wall s | tokens/s |",
             "|---|---:|---|---|---:|---:|"]
    for row in rows:
        extra = {k: v for k, v in row["after"].items() if k.endswith("accuracy")}
        before_extra = {k: v for k, v in row["before"].items() if k.endswith("accuracy")}
        other = ", ".join(f"{k} {before_extra.get(k, 0):.3f} → {v:.3f}" for k, v in extra.items())
        lines.append(f"| ({row['run']}) {row['title']} | {row['params']:,} | {row['before']['perplexity']:.1f} → "
                     f"{row['after']['perplexity']:.1f} | {other} | {row['train_wall_s']:.0f} | "
                     f"{row['tokens_per_s']:.0f} |")
    lines += ["", "Validation perplexity along the way (step: perplexity):", ""]
    for row in rows:
        path = ", ".join(f"{h['step']}: {h['perplexity']:.1f}" for h in row["history"])
        lines.append(f"- ({row['run']}) 0: {row['before']['perplexity']:.1f}, {path}")
    lines += ["", "Commands:", ""] + [f"- ({row['run']}) `lmcompress {row['command']}`" for row in rows]
    (RESULTS / "pretrain.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "pretrain.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
