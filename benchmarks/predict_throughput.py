"""`lmcompress predict` on a file of real reviews against `evaluate`'s own scoring of the same rows.

    .venv/bin/python benchmarks/predict_throughput.py runs/demo/teacher runs/demo/auto/best --rows 10000

The rows are the first `--rows` rotten-tomatoes reviews (every split; the data the first run records), written to
one CSV. For each run, in one process and in turn: evaluate's scoring path (the dataset tokenised, then
runkinds.task.predict in batches of 64 in file order: what `evaluate` times) and the `predict` stage (read the CSV,
length-sorted batches of 32, write JSONL), both over the same rows; texts/s of each, and how many predicted labels
agree. Writes benchmarks/results/raw/NAME.json and benchmarks/results/NAME.md with the processor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lmcompress.backends import load_run_model
from lmcompress.config import DataConfig, PredictConfig
from lmcompress.data import load_task
from lmcompress.data.tokenize import collator, tokenize_frame
from lmcompress.machine import processor
from lmcompress.models.load import load_tokenizer
from lmcompress.runkinds.task import predict as evaluate_predict
from lmcompress.runs.manifest import data_config_for
from lmcompress.serving import load
from lmcompress.stages.predict import predict

RESULTS = Path(__file__).parent / "results"


def evaluate_scoring(run: Path, texts: list[str], max_length: int) -> tuple[list[str], float]:
    """evaluate's path over `texts` -> (labels, seconds), the model loaded beforehand (not timed)."""
    labels = load(run).card.labels
    tokenizer, model = load_tokenizer(run), load_run_model(run, None, False)
    started = time.perf_counter()
    dataset = tokenize_frame(pd.DataFrame({"text": texts, "label": 0}), tokenizer, max_length)
    logits, _ = evaluate_predict(model, dataset, collator(tokenizer), 64)
    return [labels[i] for i in logits.argmax(-1)], time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--name", default="predict_throughput")
    args = parser.parse_args()
    task = load_task(data_config_for(DataConfig(), Path(args.runs[0])))
    texts = pd.concat([task.splits[s]["text"] for s in ("train", "validation", "test")]).tolist()[:args.rows]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "reviews.csv"
        pd.DataFrame({"review": texts}).to_csv(source, index=False)
        for run in map(Path, args.runs):
            max_length = load(run).card.max_length
            expected, evaluate_s = evaluate_scoring(run, texts, max_length)
            out = Path(work) / f"{run.name}.jsonl"
            summary = predict(PredictConfig(model=str(run), data=str(source), out=str(out)))
            written = [json.loads(line)["label"] for line in out.read_text().splitlines()]
            rows.append({"run": str(run), "rows": len(texts), "max_length": max_length,
                         "evaluate_texts_per_s": round(len(texts) / evaluate_s, 1),
                         "predict_texts_per_s": summary["texts_per_s"], "predict_model_s": summary["wall_s"],
                         "labels_agree": sum(a == b for a, b in zip(written, expected)),
                         "runtime": summary["model"]["runtime"], "precision": summary["model"]["precision"]})
            print(rows[-1], flush=True)
    cpu = processor()
    command = "python benchmarks/predict_throughput.py " + " ".join(sys.argv[1:])
    payload = {"command": command, "processor": cpu, "rows": rows}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = ["# predict against evaluate's scoring, same rows", "", f"Command: `{command}`  ",
             f"Processor: {cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}), {cpu['cores']} cores.", "",
             "| run | runtime | rows | evaluate texts/s | predict texts/s | predict / evaluate | labels agreeing |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['runtime']} {r['precision']} | {r['rows']:,} | {r['evaluate_texts_per_s']:,} "
                     f"| {r['predict_texts_per_s']:,} | {r['predict_texts_per_s'] / r['evaluate_texts_per_s']:.2f}x "
                     f"| {r['labels_agree']:,} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
