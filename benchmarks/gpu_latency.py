"""CUDA latency of run directories, fp32 and bf16 autocast, batch 1 and 32 x 64 tokens, models interleaved round by
round (CUDA events; median and interquartile range over rounds; speedups computed within each round).

    python benchmarks/gpu_latency.py RUN [RUN ...] --out cuda_latency.json   (the first run is the reference)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def quartiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return {"median": round(median, 4), "q1": round(q1, 4), "q3": round(q3, 4)}


@torch.inference_mode()
def time_once(model, batch, precision: str, inner: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        start.record()
        for _ in range(inner):
            model(**batch)
        end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / inner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default=".gpu/rotten_tomatoes.csv")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    texts = pd.read_csv(args.data)["text"].astype(str).tolist()[:64]
    models = {r: AutoModelForSequenceClassification.from_pretrained(r).cuda().eval() for r in args.runs}
    tokenizer = AutoTokenizer.from_pretrained(args.runs[0])
    batches = {b: {k: v.cuda() for k, v in tokenizer(texts[:b], truncation=True, max_length=64, padding="max_length",
                                                        return_tensors="pt").items()} for b in (1, 32)}
    keys = [(r, p, b) for r in args.runs for p in ("fp32", "bf16") for b in (1, 32)]
    for key in keys:  # warm-up (kernels, autotuning)
        for _ in range(3):
            time_once(models[key[0]], batches[key[2]], key[1])
    times: dict[tuple, list[float]] = {k: [] for k in keys}
    speedups: dict[tuple, list[float]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        this_round = {k: time_once(models[k[0]], batches[k[2]], k[1]) for k in keys}
        for k, ms in this_round.items():
            times[k].append(ms)
            speedups[k].append(this_round[(args.runs[0], "fp32", k[2])] / ms)
    rows = [{"run": r, "precision": p, "batch": b, "ms": quartiles(times[(r, p, b)]),
             "speedup_vs_reference_fp32": quartiles(speedups[(r, p, b)])} for (r, p, b) in keys]
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rounds": args.rounds,
              "seq_len": 64, "statistic": "median over rounds of the mean of 10 forwards; q1/q3 over rounds",
              "reference": args.runs[0], "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for row in rows:
        print(row["run"], row["precision"], row["batch"], row["ms"]["median"], "ms",
              row["speedup_vs_reference_fp32"]["median"], "x")


if __name__ == "__main__":
    main()
