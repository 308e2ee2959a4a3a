"""Decode speed of GGUF files in llama.cpp alone, interleaved round by round in one process: each file's rate by
llama.cpp's own timer, and its ratio to the first file's in the same round (median, IQR).

    .venv/bin/python benchmarks/gguf_decode.py --run runs/gguf-l12/teacher \
        --file teacher-q4_0=runs/gguf-l12/teacher-q4_0/model.gguf \
        --file student-q4_0-gptq=runs/gguf-l12/student-q4_0-gptq/model.gguf --results gguf_decode_q4_0_gptq

The prompt is the first 32 tokens of the run's first validation block, as in gguf_llama_cpp.py (32 new tokens,
greedy). Writes benchmarks/results/raw/NAME.json with the processor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gguf_llama_cpp import RESULTS, _speed  # benchmarks/gguf_llama_cpp.py (this script's folder)

from lmcompress.machine import processor
from lmcompress.timing import quartiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a causal-LM run: its validation blocks give the prompt")
    parser.add_argument("--file", action="append", required=True, help="NAME=PATH of a .gguf file (the first: baseline)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--results", default="gguf_decode")
    args = parser.parse_args()
    files = dict(item.split("=", 1) for item in args.file)
    speed = _speed({"run": args.run}, {name: Path(path) for name, path in files.items()}, args.rounds, pytorch=False)
    timers = {name: speed[f"{name} llama.cpp"]["timer"] for name in files}
    baseline = timers[next(iter(files))]["per_call"]
    ratios = {}
    for name, timer in timers.items():
        q1, median, q3 = quartiles([rate / base for rate, base in zip(timer["per_call"], baseline)])
        ratios[name] = {"median": round(median, 3), "iqr": [round(q1, 3), round(q3, 3)]}
    record = {"command": " ".join(["python", *sys.argv]), "processor": processor(), "files": files,
              "generation": speed, "ratio_to_first_by_timer": ratios}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.results}.json").write_text(json.dumps(record, indent=2) + "\n")
    for name, timer in timers.items():
        print(f"{name}: {timer['decode_tokens_per_s']:.1f} tokens/s, {ratios[name]['median']:.2f}x "
              f"({ratios[name]['iqr'][0]:.2f}-{ratios[name]['iqr'][1]:.2f}x) of the first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
