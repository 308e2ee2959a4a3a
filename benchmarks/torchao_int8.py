"""Should `dynamic-int8` move from torch.ao's deprecated `quantize_dynamic` to torchao? Measure both against fp32.

    .venv/bin/pip install torchao==0.18.0        # not a dependency of lmcompress: only this benchmark needs it
    .venv/bin/python benchmarks/torchao_int8.py --model runs/demo/teacher --model runs/demo/distilled

For each model: PyTorch fp32; torch.ao dynamic int8 (what `quantize --method dynamic-int8` applied at load);
torchao int8 dynamic activations + int8 weights (`Int8DynamicActivationInt8WeightConfig`, the torchao counterpart);
torchao int8 weight-only (`Int8WeightOnlyConfig`). Every variant is scored on the run's test rows and timed side by
side (interleaved rounds, batch 32 x the run's max length, speedups within rounds vs fp32 with their interquartile
range). Writes benchmarks/results/torchao_int8.{json,md} with the processor.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from lmcompress.config import DataConfig
from lmcompress.data import load_task
from lmcompress.data.tokenize import fixed_batch
from lmcompress.machine import processor
from lmcompress.models.load import load_tokenizer, load_trained_classifier
from lmcompress.runkinds.task import score_split
from lmcompress.runs.manifest import data_config_for
from lmcompress.timing import interleaved_rounds, per_round_ratios, quartiles

RESULTS = Path(__file__).parent / "results"


def variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    out = {"fp32": model, "torch.ao dynamic int8": torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)}
    for name, config in (("torchao int8 dyn-act + int8 weight", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int8 weight-only", Int8WeightOnlyConfig())):
        quantized = copy.deepcopy(model)
        quantize_(quantized, config)
        out[name] = quantized.eval()
    return out


def measure(folder: Path, rounds: int, threads: int) -> list[dict]:
    data_cfg = data_config_for(DataConfig(), folder)
    data_cfg.max_train_examples = None
    task = load_task(data_cfg)
    tokenizer = load_tokenizer(folder)
    model = load_trained_classifier(folder, task.labels, task.task == "regression", task.task).eval()
    served = variants(model)
    test = task.splits["test"]
    batch = fixed_batch(test["text"].tolist()[:64], None, tokenizer, data_cfg.max_length, 32)
    rows = []
    for name, variant in served.items():
        scores = score_split(variant, tokenizer, task, "test", data_cfg.max_length, 64)
        rows.append({"model": str(folder), "variant": name, "accuracy": round(scores["accuracy"], 4)})
        print(f"{folder} {name}: accuracy {scores['accuracy']:.4f}", file=sys.stderr)
    torch.set_num_threads(threads)
    times = interleaved_rounds({name: functools.partial(v, **batch) for name, v in served.items()}, rounds)
    for row in rows:
        q1, median, q3 = quartiles(times[row["variant"]])
        s1, speedup, s3 = quartiles(per_round_ratios(times["fp32"], times[row["variant"]]))
        row |= {"ms_b32": round(median, 2), "ms_iqr": [round(q1, 2), round(q3, 2)], "speedup_vs_fp32": round(speedup, 3),
                "speedup_iqr": [round(s1, 3), round(s3, 3)]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="fine-tuned run dir (repeatable)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import torchao

    rows = [row for folder in args.model for row in measure(Path(folder), args.rounds, args.threads)]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    command = "python benchmarks/torchao_int8.py " + " ".join(f"--model {m}" for m in args.model)
    payload = {"command": command, "processor": processor(), "lscpu": lscpu, "threads": args.threads,
               "rounds": args.rounds, "torch": torch.__version__, "torchao": torchao.__version__,
               "platform": platform.platform(), "rows": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "torchao_int8.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    cpu = processor()
    lines = [f"# int8 in PyTorch: torch.ao dynamic vs torchao ({torchao.__version__})", "",
             f"Command: `{command}`  ", f"Processor: {cpu['model']} ({', '.join(cpu['isa'])}), {args.threads} threads, "
             f"torch {torch.__version__}; batch 32 at the run's max length, {args.rounds} interleaved rounds, speedup "
             "= median of per-round fp32/variant ratios (interquartile range).", "",
             "| model | variant | test accuracy | ms b32 (IQR) | speedup vs fp32 (IQR) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['accuracy']:.4f} | {r['ms_b32']:.1f} ({r['ms_iqr'][0]:.1f}–"
                     f"{r['ms_iqr'][1]:.1f}) | {r['speedup_vs_fp32']:.2f}x ({r['speedup_iqr'][0]:.2f}–"
                     f"{r['speedup_iqr'][1]:.2f}) |")
    (RESULTS / "torchao_int8.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
