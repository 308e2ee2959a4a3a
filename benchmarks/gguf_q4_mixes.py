"""Which tensors of a 4-bit GGUF file keep more bits: size against perplexity for a few mixes of the block types the
`gguf` package can write (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; it writes no K-quants, so llama.cpp's Q6_K output and
Q4_K_M's mix are approximated with them).

    .venv/bin/python benchmarks/gguf_q4_mixes.py --run runs/gguf-bench/teacher [--run runs/gguf-bench/student]

RUN: a causal-LM run (prune-lm / distill-lm); every file is scored on its validation blocks, as transformers reads the
file back, beside the PyTorch checkpoint. `smollm2-135m` ships as a Q4_1 GGUF file: its weights lie on Q4_1's grid, so
re-quantising the teacher to Q4_1 (blocks aligned as shipped) is exact and its other rows measure a change of grid; a
pruned and trained student's rows are what a user's model meets. Writes benchmarks/results/raw/gguf_q4_mixes.json and
benchmarks/results/gguf_q4_mixes.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from unittest import mock

RESULTS = Path(__file__).parent / "results"
# mix -> (type of the output / tied embedding, type of attn_v and ffn_down in the layers that get more bits, the rest)
MIXES = {
    "Q4_0, output Q8_0": ("Q8_0", "Q4_0", "Q4_0"),
    "Q4_0, output Q5_1": ("Q5_1", "Q4_0", "Q4_0"),
    "Q4_0, output Q5_1, attn_v/ffn_down Q8_0 (every layer)": ("Q5_1", "Q8_0", "Q4_0"),
    "Q4_0, output Q5_1, attn_v/ffn_down Q5_1 (every layer)": ("Q5_1", "Q5_1", "Q4_0"),
    "Q4_1, output Q8_0": ("Q8_0", "Q4_1", "Q4_1"),
    "Q4_1, output Q5_1": ("Q5_1", "Q4_1", "Q4_1"),
    "Q5_0, output Q5_1": ("Q5_1", "Q5_0", "Q5_0"),
}


def _mixed_type(mix: tuple[str, str, str]):
    from lmcompress.backends import gguf_file

    original = gguf_file.tensor_type  # (patched with `pick` while a file is written)

    def pick(gguf, gguf_name, shape, precision, tied=False):
        kind = original(gguf, gguf_name, shape, "q4_0", tied)
        types = gguf.GGMLQuantizationType
        if kind.name not in ("Q4_0", "Q8_0"):
            return kind  # F32 vectors, F16 rows that are not whole blocks
        output, more, rest = mix
        if kind.name == "Q8_0":
            return getattr(types, output)
        if gguf_name.endswith(("attn_v.weight", "ffn_down.weight")):
            return getattr(types, more)
        return getattr(types, rest)
    return pick


def _score(run: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from lmcompress.backends import gguf_file
    from lmcompress.data.pretraining import collator
    from lmcompress.runkinds.lm import run_validation_set, score_lm

    _, tokenizer, data, _ = run_validation_set(run)
    collate = collator(tokenizer, "clm")
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    rows = [{"mix": "PyTorch fp32 checkpoint", "size_mb": None,
             "perplexity": score_lm(model, data.validation, collate, "clm", 16)["perplexity"]}]
    for name, mix in MIXES.items():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.gguf"
            with mock.patch.object(gguf_file, "tensor_type", _mixed_type(mix)):
                types = gguf_file.write_gguf(model, tokenizer, path, "q4_0", run.name)
            loaded, _ = gguf_file.load_gguf(path)
            ppl = score_lm(loaded, data.validation, collate, "clm", 16)["perplexity"]
            rows.append({"mix": name, "size_mb": round(path.stat().st_size / 1e6, 1), "perplexity": ppl,
                         "tensor_types": types})
            print(f"{run.name}: {name}: {rows[-1]['size_mb']} MB, perplexity {ppl:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    args = parser.parse_args()
    from lmcompress.machine import processor

    result = {"command": "python benchmarks/gguf_q4_mixes.py " + " ".join(f"--run {r}" for r in args.run),
              "processor": processor(), "python": platform.python_version(),
              "runs": {str(run): _score(run) for run in args.run}}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "gguf_q4_mixes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# 4-bit GGUF mixes: size against perplexity", "", f"`{result['command']}` on {result['processor']}. "
             "Perplexity of each file as transformers reads it back, on the run's validation blocks. smollm2-135m "
             "ships as a Q4_1 GGUF: the teacher's weights lie on Q4_1's grid (re-quantised to Q4_1: exact); the "
             "pruned and trained student's rows are what a user's model meets.", ""]
    for run, rows in result["runs"].items():
        base = rows[0]["perplexity"]
        lines += [f"## {run}", "", "| mix | size MB | perplexity | vs fp32 |", "|---|---:|---:|---:|"]
        lines += [f"| {r['mix']} | {r['size_mb'] or '-'} | {r['perplexity']:.2f} | "
                  f"{100 * (r['perplexity'] / base - 1):+.1f}% |" for r in rows]
        lines.append("")
    (RESULTS / "gguf_q4_mixes.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
