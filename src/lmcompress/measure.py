"""What a model costs: parameters, bytes on disk, and CPU latency (median of timed forward passes, warm-up excluded;
side by side, models interleaved round by round, when several are compared)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .data.tokenize import fixed_batch
from .timing import interleaved_rounds, quartiles, torch_threads

log = logging.getLogger("lmcompress")

LATENCY_BATCHES = (1, 32)


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once); the weights of an ONNX graph or OpenVINO IR."""
    if hasattr(model, "param_count"):  # OnnxClassifier, OpenVinoClassifier
        return model.param_count
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def weights_size_bytes(folder: Path) -> int:
    """Bytes of the weight files a deployment ships (safetensors / ONNX / OpenVINO IR / GGUF), not logs or
    tokenizer. A single weights file (a .gguf teacher) is its own size."""
    if folder.is_file():
        return folder.stat().st_size
    files = list(folder.glob("*.safetensors")) + list(folder.glob("*.onnx")) + list(folder.glob("*.onnx.data"))
    files += [folder / "model.bin"] if (folder / "model.xml").is_file() else []  # the IR's weights
    files += list(folder.glob("*.gguf"))
    return sum(f.stat().st_size for f in files)


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, make_batch: Callable[[int], dict[str, torch.Tensor]], repeats: int,
                    warmup: int = 3, batch_sizes: tuple[int, ...] = LATENCY_BATCHES) -> dict[str, float]:
    """Median wall time (ms) of a forward pass per batch size, warm-up runs excluded."""
    model.eval()
    out: dict[str, float] = {}
    for size in batch_sizes:
        batch = make_batch(size)
        for _ in range(warmup):
            model(**batch)
        times = []
        for _ in range(repeats if size > 1 else repeats * 3):
            start = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - start) * 1000.0)
        out[f"batch{size}"] = round(statistics.median(times), 3)
    return out


def latency_for_texts(model: torch.nn.Module, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                      repeats: int, threads: int | None) -> dict[str, Any]:
    """Latency on real test texts padded to max_length, with the thread count fixed and recorded."""
    with torch_threads(threads):
        latency = measure_latency(
            model, lambda size: fixed_batch(texts[:64], pairs[:64] if pairs else None, tokenizer, max_length, size),
            repeats)
    return {"latency_ms": latency, "latency_setup": {"threads": threads or torch.get_num_threads(), "seq_len": max_length,
                                                     "repeats": repeats, "statistic": "median"}}


def time_side_by_side(rows: list[dict[str, Any]], calls: dict[tuple[int, int], Any], repeats: int,
                       threads: int) -> None:
    """Per row and batch size: median latency, its interquartile range, and every round's time (kept in
    report.json: speedups are taken within each round). Batch 1 gets 3x the rounds: single calls are short and
    noisier."""
    with torch_threads(threads):
        for size in LATENCY_BATCHES:
            times = interleaved_rounds({index: calls[(index, s)] for index, s in calls if s == size},
                                       repeats * 3 if size == 1 else repeats)
            for index, row in enumerate(rows):
                q1, median, q3 = quartiles(times[index])
                row[f"latency_ms_b{size}"] = round(median, 3)
                row[f"latency_iqr_ms_b{size}"] = [round(q1, 3), round(q3, 3)]
                row[f"latency_rounds_ms_b{size}"] = [round(t, 4) for t in times[index]]
    for row in rows:
        log.info("%s: %.1f ms @ b32 (interquartile %.1f-%.1f)", row["name"], row["latency_ms_b32"],
                 *row["latency_iqr_ms_b32"])


GENERATION_TOKENS = 32


GenerateCall = Callable[[int], Callable[[], object]]  # new tokens -> one generation to time (greedy, batch 1)


def torch_generator(model: torch.nn.Module, prompt: torch.Tensor) -> GenerateCall:
    """A transformers causal LM's `generate` from `prompt` ([1, P] token ids), exactly `new_tokens` long."""
    model.eval()
    mask = torch.ones_like(prompt)
    eos = model.config.eos_token_id  # a list in Llama-3 configs
    pad = (eos[0] if isinstance(eos, list) and eos else eos) or 0
    return lambda tokens: lambda: model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=tokens,
                                                 min_new_tokens=tokens, do_sample=False, pad_token_id=pad)


def generation_speed(models: dict[str, torch.nn.Module | GenerateCall], prompt: torch.Tensor,
                     new_tokens: int = GENERATION_TOKENS, rounds: int = 5) -> dict[str, dict[str, Any]]:
    """Causal LMs at batch 1, greedy with the KV cache, timed in interleaved rounds (warm-up first) -> per model:
    time to first token (the prompt's forward and one token), decode tokens/s (the `new_tokens` - 1 tokens after the
    first) and their interquartile ranges. `prompt`: [1, P] token ids; a model is a transformers causal LM or a
    GenerateCall (another runtime, such as llama.cpp: backends/llama_cpp.generator)."""
    calls: dict[tuple[str, int], Callable[[], object]] = {}
    for name, model in models.items():
        make = torch_generator(model, prompt) if isinstance(model, torch.nn.Module) else model
        calls[(name, 1)] = make(1)
        calls[(name, new_tokens)] = make(new_tokens)
    with torch.inference_mode():
        times = interleaved_rounds(calls, rounds, warmup=1)
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        first, full = times[(name, 1)], times[(name, new_tokens)]
        rates = [(new_tokens - 1) * 1000.0 / max(f - t, 1e-6) for f, t in zip(full, first)]
        q1, ttft, q3 = quartiles(first)
        r1, rate, r3 = quartiles(rates)
        out[name] = {"ttft_ms": round(ttft, 2), "ttft_iqr_ms": [round(q1, 2), round(q3, 2)],
                     "decode_tokens_per_s": round(rate, 1), "decode_iqr": [round(r1, 1), round(r3, 1)],
                     "prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens, "rounds": rounds}
    return out
