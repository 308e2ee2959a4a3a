"""Bi-encoder distillation of minilm-l6 (a sentence-embedding model) into a 2-layer student, on real text.

    .venv/bin/python benchmarks/distill_embeddings.py --out runs/embeddings-bench [--student "layers=2"]

Runs `lmcompress distill-embeddings --teacher minilm-l6` on enwiki-sample: the student learns the teacher's
mean-pooled embeddings of the training articles' sentences. The held-aside pairs come from the validation articles
(seeded document split): half two sentences of one article (score 1), half sentences of two articles (score 0).
Reports the rank correlation of each model's cosine similarities with those scores (teacher, student before and
after), the student's agreement with the teacher's cosines, params and latency. Writes
benchmarks/results/raw/distill_embeddings.json and benchmarks/results/distill_embeddings.md.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/embeddings-bench")
    parser.add_argument("--student", default="layers=2")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--pairs", default="2000")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["distill-embeddings", "--teacher", "minilm-l6", "--student", args.student, "--data", "enwiki-sample",
           "--max-length", "64", "--epochs", args.epochs, "--batch-size", "32", "--learning-rate", "1e-4",
           "--max-validation-examples", args.pairs, "--out", str(out), "--json", "--quiet"]
    print("lmcompress " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "lmcompress"), *cmd], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return done.returncode
    metrics = json.loads(done.stdout)
    manifest = json.loads((out / "lmcompress.json").read_text())
    import torch

    result = {"command": "lmcompress " + " ".join(cmd), "machine": platform.platform(),
              "cpu_threads": torch.get_num_threads(), "data": manifest["data"], "metrics": metrics,
              "train": manifest["train"], "command_wall_s": round(wall, 1)}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "distill_embeddings.json").write_text(json.dumps(result, indent=2) + "\n")
    m, t, b = metrics["metrics"], metrics["teacher_metrics"], metrics["metrics_before"]
    lines = ["# Bi-encoder distillation: minilm-l6 -> " + args.student, "",
             f"`{result['command']}` on {result['machine']}, {result['cpu_threads']} threads.", "",
             f"{manifest['data']['train_sentences']:,} training sentences from the training articles of enwiki-sample; "
             f"{manifest['data']['pairs']:,} held-aside pairs from {manifest['data']['validation_documents']} "
             "validation articles (half same-article, score 1; half different articles, score 0).", "",
             "| model | params | Spearman(cosine, same-article) | agreement with teacher cosines | ms b1 | ms b32 |",
             "|---|---:|---:|---:|---:|---:|",
             f"| minilm-l6 (teacher) | {metrics['teacher_params']:,} | {t['spearman']:.4f} | 1 | - | - |",
             f"| {args.student}, before distillation | {metrics['params']:,} | {b['spearman']:.4f} | "
             f"{b['teacher_agreement']:.4f} | - | - |",
             f"| {args.student}, distilled | {metrics['params']:,} | {m['spearman']:.4f} | "
             f"{m['teacher_agreement']:.4f} | {metrics['latency_ms']['batch1']:.1f} | "
             f"{metrics['latency_ms']['batch32']:.1f} |", "",
             f"Retention (student / teacher Spearman): {metrics['retention']:.1%}. Distillation: "
             f"{manifest['train']['steps']} steps, {manifest['train']['wall_time_s']:.0f} s (command {wall:.0f} s)."]
    (RESULTS / "distill_embeddings.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "distill_embeddings.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
