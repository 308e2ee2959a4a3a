"""Shrink one fine-tuned teacher every way `lmcompress` can, then measure everything side by side in one process.

    .venv/bin/python benchmarks/shrink.py --teacher runs/demo/teacher --out runs/shrink

Variants (each made by the real stage, skipped when already complete):
  onnx-fp32         lmcompress export                           (validated fp32 ONNX)
  openvino-int8     lmcompress quantize --method openvino-int8  (OpenVINO IR, NNCF int8, calibrated)
  onnx-int8         lmcompress quantize --method onnx-int8      (ONNX Runtime dynamic int8)
  static-int8       lmcompress quantize --method static-int8    (ONNX Runtime static int8, calibrated)
  pruned            lmcompress prune --heads 0.5 --ffn 0.5      (recovery: distillation from the teacher)
  pruned-onnx-int8  onnx-int8 of the pruned model
  albert            lmcompress distill --student 'albert;embedding=128;shared'
Then `lmcompress compare` scores and times all of them on the same test rows (batch 1 and 32, median of repeats,
same threads), and each output is reloaded with plain transformers / onnxruntime (no lmcompress code) to check that
it reproduces the accuracy its run recorded. Writes benchmarks/results/raw/shrink.json and benchmarks/results/shrink.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lmcompress.config import (CompareConfig, DataConfig, DistillConfig, DistillLossConfig, ExportConfig, PruneConfig,
                               QuantizeConfig, TrainConfig)
from lmcompress.data import load_task
from lmcompress.stages.distill import distill
from lmcompress.stages.compare import compare
from lmcompress.runs.manifest import data_config_for, is_complete
from lmcompress.stages.prune import prune
from lmcompress.stages.export import export
from lmcompress.stages.quantize import quantize

RESULTS = Path(__file__).parent / "results"


def stages(teacher: Path, out: Path, epochs: float) -> dict[str, tuple]:
    train = TrainConfig(epochs=epochs, batch_size=32, learning_rate=1e-4, checkpoint_every_steps=500)
    loss = DistillLossConfig(temperature=4.0, alpha=0.5, hidden_weight=1.0)
    return {
        "onnx-fp32": (export, ExportConfig(model=str(teacher), out=str(out / "onnx-fp32"))),
        "onnx-int8": (quantize, QuantizeConfig(model=str(teacher), out=str(out / "onnx-int8"), method="onnx-int8")),
        "openvino-int8": (quantize, QuantizeConfig(model=str(teacher), out=str(out / "openvino-int8"),
                                                   method="openvino-int8")),
        "static-int8": (quantize, QuantizeConfig(model=str(teacher), out=str(out / "static-int8"), method="static-int8")),
        "pruned": (prune, PruneConfig(model=str(teacher), out=str(out / "pruned"), heads=0.5, ffn=0.5, train=train,
                                      loss=loss)),
        "pruned-onnx-int8": (quantize, QuantizeConfig(model=str(out / "pruned"), out=str(out / "pruned-onnx-int8"),
                                                      method="onnx-int8")),
        "albert": (distill, DistillConfig(teacher=str(teacher), student="albert;embedding=128;shared",
                                          out=str(out / "albert"), train=train, loss=loss)),
    }


def plain_reload_accuracy(folder: Path, texts: list[str], labels: np.ndarray, max_length: int) -> float:
    """Accuracy with nothing but transformers / onnxruntime (what a deployment has)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "model.xml").is_file():
        import openvino as ov

        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        names = {port.get_any_name() for port in compiled.inputs}
        run = lambda enc: compiled({k: v for k, v in enc.items() if k in names})["logits"]  # noqa: E731
        tensors = "np"
    elif (folder / "model.onnx").is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        run = lambda enc: session.run(["logits"], {k: v for k, v in enc.items() if k in names})[0]  # noqa: E731
        tensors = "np"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        run = lambda enc: model(**enc).logits.numpy()  # noqa: E731
        tensors = "pt"
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            enc = dict(tokenizer(texts[start:start + 64], truncation=True, max_length=max_length, padding=True,
                                 return_tensors=tensors))
            predictions.append(run(enc).argmax(-1))
    return float((np.concatenate(predictions) == labels).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher"))
    parser.add_argument("--out", type=Path, default=Path("runs/shrink"))
    parser.add_argument("--epochs", type=float, default=3.0, help="recovery / ALBERT distillation epochs")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    wall: dict[str, float] = {}
    for name, (stage, cfg) in stages(args.teacher, args.out, args.epochs).items():
        folder = Path(cfg.out)
        if is_complete(folder):
            manifest = json.loads((folder / "lmcompress.json").read_text())
            wall[name] = manifest.get("train", {}).get("wall_time_s")
            print(f"reusing {folder}")
            continue
        cfg.overwrite = True
        start = time.perf_counter()
        stage(cfg)
        wall[name] = round(time.perf_counter() - start, 1)

    names = ["teacher", *wall]
    folders = [args.teacher] + [args.out / n for n in wall]
    report_dir = args.out / "report"
    report = compare(CompareConfig(runs=[str(f) for f in folders], out=str(report_dir), overwrite=True,
                                   latency_repeats=args.repeats))
    data_cfg = data_config_for(DataConfig(), args.teacher)
    task = load_task(data_cfg)
    test = task.splits["test"]
    labels = test["label"].to_numpy()  # label ids
    rows = []
    for name, folder, row in zip(names, folders, report["rows"]):
        recorded = json.loads((folder / "metrics.json").read_text())["metrics"]["accuracy"]
        reloaded = plain_reload_accuracy(folder, test["text"].tolist(), labels, data_cfg.max_length)
        manifest = json.loads((folder / "lmcompress.json").read_text())
        rows.append({**{k: row[k] for k in ("params", "size_mb", "value", "retention", "latency_ms_b1", "latency_ms_b32",
                                            "speedup_b1", "speedup_b32")},
                     "name": name, "recorded_accuracy": recorded, "plain_reload_accuracy": reloaded,
                     "stage_wall_s": wall.get(name), "pruning": manifest.get("pruning"),
                     "validation": (manifest.get("quantization") or manifest.get("export") or {}).get(
                         "export_validation", (manifest.get("export") or {}).get("validation"))})
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "teacher": str(args.teacher),
               "epochs": args.epochs, "setup": report["setup"], "versions": report["versions"],
               "test_rows": len(test), "rows": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "shrink.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    setup = report["setup"]
    md = ["# Shrinking the rotten-tomatoes teacher: pruning, ALBERT conversion, int8, ONNX", "",
          f"Command: `{results['command']}`  ",
          f"{setup['cpu']}, {setup['cores']} cores, {setup['threads']} threads; latency = median of {args.repeats} "
          f"forward passes at sequence length {setup['seq_len']} after warm-up, all models timed in one process by "
          f"`lmcompress compare`; {len(test)} test rows. Recovery/ALBERT distillation: {args.epochs:g} epochs. "
          "'plain reload' = accuracy recomputed with transformers / onnxruntime only.", "",
          "| model | params | size MB | test acc | Δ vs teacher | plain reload | ms b1 | ms b32 | speedup b1 | speedup b32 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    base = rows[0]["value"]
    for r in rows:
        md.append(f"| {r['name']} | {r['params']:,} | {r['size_mb']} | {r['value']:.4f} | {100 * (r['value'] - base):+.2f} pt | "
                  f"{r['plain_reload_accuracy']:.4f} | {r['latency_ms_b1']:.2f} | {r['latency_ms_b32']:.1f} | "
                  f"{r['speedup_b1']:.2f}x | {r['speedup_b32']:.2f}x |")
    (RESULTS / "shrink.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
