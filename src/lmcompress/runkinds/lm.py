"""The language-model run kind (pretrain, distill-lm and prune-lm runs): perplexity on the fixed validation set
(`data.pretraining`) rebuilt from a run's record, the metrics.json payload, the end of an LM stage, and the
side-by-side comparison of language models."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import CompareConfig, EvaluateConfig, PretrainConfig, from_dict
from ..data import lm
from ..data.pretraining import PAIR_METRIC, LMData, cache_root, collator, corpus, prepare_data
from ..errors import LmcError
from ..backends import llama_cpp
from ..backends.gguf_file import GGUF_FILE, load_gguf
from ..backends.onnx import MODEL_FILE, OnnxClassifier
from ..measure import (GENERATION_TOKENS, LATENCY_BATCHES, count_params, generation_speed, measure_latency,
                       time_side_by_side, weights_size_bytes)
from ..models.load import load_for_pretraining, load_lm_teacher, load_tokenizer, resolve
from ..objectives import lm_forward, token_loss_sum
from ..runs.manifest import Manifest, TrainingRecord, read_manifest
from ..runs.rundir import RunDir, finish_stage
from ..timing import torch_threads

log = logging.getLogger("lmcompress")

GENERATION_PROMPT = 32  # tokens of the prompt generation speed is timed on
GENERATION_CONTEXT = GENERATION_PROMPT + GENERATION_TOKENS  # llama.cpp's context for that generation


# ------------------------------------------------------------------------------------------------ scoring


# no_grad, not inference_mode: distill-lm scores its teacher with this too, and a sharded (--fsdp) teacher's gathered
# weights live in buffers that FSDP refills outside inference mode, which inference tensors do not allow
@torch.no_grad()
def score_lm(model: torch.nn.Module, examples: list[dict[str, np.ndarray]], collate, objective: str,
             batch_size: int) -> dict[str, float]:
    """Token-weighted loss, perplexity and accuracy over the fixed validation set (+ NSP/SOP accuracy)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # (an ONNX Runtime session has no parameters)
    loss_sum, tokens, correct, pair_correct, pairs = 0.0, 0, 0, 0, 0
    for batch in DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = lm_forward(model, batch, objective)
        if objective == "clm":
            s, n, c = token_loss_sum(out.token_logits[:, :-1], out.token_labels[:, 1:])
        else:
            s, n, c = token_loss_sum(out.token_logits, out.token_labels)
        loss_sum, tokens, correct = loss_sum + s, tokens + n, correct + c
        if out.pair_logits is not None:
            pair_correct += int((out.pair_logits.argmax(-1) == batch["pair_labels"]).sum())
            pairs += len(batch["pair_labels"])
    loss = loss_sum / max(1, tokens)
    metrics = {"perplexity": float(math.exp(min(loss, 50.0))), "loss": loss,
               ("token_accuracy" if objective == "clm" else "mlm_accuracy"): correct / max(1, tokens)}
    if objective in PAIR_METRIC:
        metrics[PAIR_METRIC[objective]] = pair_correct / max(1, pairs)
    return metrics


def latency_batch(collate: lm.PretrainCollator, examples: list[dict[str, np.ndarray]],
                  size: int) -> dict[str, torch.Tensor]:
    """`size` validation examples (repeated when there are fewer) as model inputs, targets dropped."""
    batch = collate((examples * -(-size // len(examples)))[:size])
    return {k: v for k, v in batch.items() if k not in ("labels", "pair_labels")}


def lm_metrics_payload(cfg: PretrainConfig, model: torch.nn.Module, tokenizer, data: LMData, folder: Path,
                       scores: dict[str, float], latency_repeats: int | None = 10) -> dict[str, Any]:
    """metrics.json of an LM run (schema: docs/run-directories.md; perplexity as the main metric);
    latency unless repeats is None."""
    payload = {"task": cfg.objective, "split": "validation", "metrics": scores, "main_metric": "perplexity",
               "params": count_params(model), "size_bytes": weights_size_bytes(folder),
               "examples": len(data.validation), "validation_fingerprint": data.record["validation_fingerprint"]}
    if latency_repeats is not None:
        collate = collator(tokenizer, cfg.objective)
        payload["latency_ms"] = measure_latency(model, lambda size: latency_batch(collate, data.validation, size),
                                                latency_repeats)
        payload["latency_setup"] = {"threads": torch.get_num_threads(), "seq_len": cfg.data.max_length,
                                    "repeats": latency_repeats, "statistic": "median"}
    return payload


def finish_lm_run(run: RunDir, cfg: PretrainConfig, model: torch.nn.Module, tokenizer, data: LMData, result,
                  initial: dict[str, float], manifest: Callable[[TrainingRecord], Manifest],
                  metrics_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the trained LM and its tokenizer, write metrics.json (the kept weights' validation scores, latency, and
    `metrics_extra`) and the manifest built by `manifest(train record)`, then commit the run -> the summary (empty on
    non-main ranks)."""
    model = model.cpu()
    tokens_per_s = round(result.examples_per_s * data.mean_train_tokens, 1)

    def save_and_score(folder: Path) -> dict[str, Any]:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        scores = result.kept_scores("perplexity", False, cfg.train.keep_best)
        return lm_metrics_payload(cfg, model, tokenizer, data, folder, scores) | {"metrics_before": initial} | (
            metrics_extra or {})

    return finish_stage(run, save_and_score,
                        lambda metrics: manifest(TrainingRecord.of(result, tokens_per_s=tokens_per_s)),
                        wall_time_s=round(result.wall_time_s, 1), tokens_per_s=tokens_per_s)


def run_validation_set(folder: Path) -> tuple[PretrainConfig, Any, LMData, str]:
    """A pre-training run's fixed validation set, rebuilt from its recorded config and its own tokenizer
    -> (config, tokenizer, data, corpus source)."""
    manifest = read_manifest(folder)
    # a distill-lm run records the equivalent pre-training config of its data under lm_config
    recorded = manifest.records.get("lm_config") or manifest.config
    cfg = from_dict(PretrainConfig, recorded, where=f"{folder}/lmcompress.json config")
    tokenizer = load_tokenizer(folder)
    documents, source, train_ids, validation_ids = corpus(cfg)
    data = prepare_data(cfg, tokenizer, documents, train_ids, validation_ids, cache_root(cfg))
    expected = (manifest.data or {}).get("validation_fingerprint")
    if expected and expected != data.record["validation_fingerprint"]:
        log.warning("the validation examples differ from those recorded at training time (corpus changed?)")
    return cfg, tokenizer, data, source


def _compared_model(folder: Path, manifest: Manifest, tokenizer, objective: str, seed: int):
    """(model, its tokenizer): an LM run's, or a plain language model's (a zoo name, HF dir or .gguf file)."""
    if manifest.is_run:
        return load_lm_run(folder, tokenizer, objective, seed), load_tokenizer(folder)
    plain = load_lm_teacher(str(folder), objective)
    return plain.model, plain.tokenizer


def served_by(folder: Path) -> str:
    """What runs a language model here: a GGUF file is dequantised into PyTorch fp32 by transformers (its timings
    are PyTorch's, not llama.cpp's)."""
    if folder.suffix == ".gguf" or (folder / GGUF_FILE).is_file():
        return "torch (GGUF dequantised)"
    return "onnxruntime" if (folder / MODEL_FILE).is_file() else "torch"


def load_lm_run(folder: Path, tokenizer, objective: str, seed: int) -> torch.nn.Module:
    """A language-model run's model, in eval mode: its checkpoint, its GGUF file (export --format gguf) or its ONNX
    graph (export / quantize)."""
    if (folder / GGUF_FILE).is_file():
        return load_gguf(folder / GGUF_FILE)[0]
    if (folder / MODEL_FILE).is_file():
        return OnnxClassifier(folder / MODEL_FILE)
    return load_for_pretraining(resolve(str(folder)), tokenizer, objective, seed).eval()


def generation_prompt(data: LMData) -> torch.Tensor:
    """The first validation block's first tokens [1, P]: the prompt generation is timed on."""
    return torch.tensor(data.validation[0]["input_ids"][:GENERATION_PROMPT], dtype=torch.long).unsqueeze(0)


def _time_side_by_side(rows: list[dict[str, Any]], models: list[torch.nn.Module], collate, data: LMData,
                       repeats: int, threads: int, causal: bool) -> None:
    """Forward latency of every model, interleaved round by round; causal LMs also generate (batch 1, greedy)."""
    batches = {size: latency_batch(collate, data.validation, size) for size in LATENCY_BATCHES}
    calls = {(i, size): functools.partial(model, **batches[size]) for i, model in enumerate(models)
             for size in LATENCY_BATCHES}
    with torch.inference_mode():
        time_side_by_side(rows, calls, repeats, threads)
    if not causal:
        return
    generating = {i: model for i, model in enumerate(models) if hasattr(model, "generate")}  # (not ONNX graphs)
    with torch_threads(threads):
        speed = generation_speed(generating, generation_prompt(data), rounds=max(3, repeats // 2)) if generating else {}
    for i, row in enumerate(rows):
        row["generation"] = speed.get(i)
        if i in speed:
            log.info("%s: first token %.1f ms, %.1f tokens/s", row["name"], speed[i]["ttft_ms"],
                     speed[i]["decode_tokens_per_s"])


def evaluate(folder: Path, manifest: Manifest, cfg: EvaluateConfig) -> dict[str, Any]:
    """A pre-training, distill-lm or prune-lm run (or its GGUF export): its fixed validation set rebuilt and scored
    -> the metrics.json payload; causal LMs also report their generation speed."""
    pcfg, tokenizer, data, _ = run_validation_set(folder)
    model = load_lm_run(folder, tokenizer, pcfg.objective, pcfg.train.seed)
    scores = score_lm(model, data.validation, collator(tokenizer, pcfg.objective), pcfg.objective, 64)
    payload = lm_metrics_payload(pcfg, model, tokenizer, data, folder, scores,
                                 cfg.latency_repeats if cfg.latency else None)
    payload["backend"] = served_by(folder)
    gguf = folder / GGUF_FILE
    if gguf.is_file():  # the file as llama.cpp runs it, beside transformers' reading of it
        payload["llama_cpp"] = _llama_cpp_scores(gguf, data)
    if not (cfg.latency and pcfg.objective == "clm" and hasattr(model, "generate")):
        return payload
    runtimes: dict[str, Any] = {"model": model}
    decode_times: list[tuple[int, float]] = []
    if payload.get("llama_cpp"):
        runtimes["llama.cpp"] = llama_cpp.generator(llama_cpp.open_model(gguf, GENERATION_CONTEXT,
                                                                         torch.get_num_threads()),
                                                    generation_prompt(data)[0].tolist(), decode_times)
    speed = generation_speed(runtimes, generation_prompt(data))
    payload["generation"] = speed["model"]
    if "llama.cpp" in speed:
        # the loop's rate (sampling and Python included) and llama.cpp's own timer of its forward passes
        payload["llama_cpp"]["generation"] = speed["llama.cpp"] | {"timer": llama_cpp.timer_rate(decode_times)}
        log.info("llama.cpp: first token %.1f ms, %.1f tokens/s (transformers from the same file: %.1f ms, %.1f "
                 "tokens/s)", speed["llama.cpp"]["ttft_ms"], speed["llama.cpp"]["decode_tokens_per_s"],
                 speed["model"]["ttft_ms"], speed["model"]["decode_tokens_per_s"])
    return payload


def _llama_cpp_scores(path: Path, data: LMData) -> dict[str, Any] | None:
    """llama.cpp's perplexity of the file on the validation blocks; None when it is not installed (one line says
    how to add it) or cannot run the file (a warning): llama.cpp is optional, so it never stops an evaluation."""
    if not llama_cpp.available():
        log.info(llama_cpp.INSTALL_HINT)
        return None
    try:
        scored = llama_cpp_perplexity(path, data.validation)
    except LmcError as exc:
        log.warning("llama.cpp: %s", exc)
        return None
    log.info("llama.cpp: perplexity %.2f", scored["perplexity"])
    return {"perplexity": scored["perplexity"], "tokens": scored["tokens"], "version": llama_cpp.version()}


def llama_cpp_perplexity(path: Path, blocks: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The validation blocks' perplexity as llama.cpp computes it from the GGUF file (padding left out)."""
    ids = [np.asarray(b["input_ids"])[np.asarray(b["attention_mask"]).astype(bool)] if "attention_mask" in b
           else np.asarray(b["input_ids"]) for b in blocks]
    model = llama_cpp.open_model(path, max(len(i) for i in ids), torch.get_num_threads(), all_logits=True)
    return llama_cpp.perplexity(model, [i.tolist() for i in ids])


def compare_rows(cfg: CompareConfig, folders: list[Path], names: list[str], manifests: list[Manifest],
                 teacher_index: int, threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pre-trained, distilled or pruned language models: perplexity on the teacher run's fixed validation set (the
    first LM run's when the teacher is a plain model, such as smollm2-135m), which only means the same thing for runs
    that share its tokenizer."""
    for name, manifest in zip(names, manifests):  # before any slow work
        if manifest.is_run and not manifest.is_language_model:
            raise LmcError(f"{name} is not a language-model run; compare pre-trained models with each other and "
                           "task models with each other")
    reference = teacher_index if manifests[teacher_index].is_run else next(i for i, m in enumerate(manifests) if m.is_run)
    pcfg, tokenizer, data, source = run_validation_set(folders[reference])
    scoring = "clm" if pcfg.objective == "clm" else "mlm"  # sentence-pair heads are not part of the comparison
    collate = collator(tokenizer, pcfg.objective)

    rows, models = [], []
    with torch_threads(threads):
        for name, folder, manifest in zip(names, folders, manifests):
            model, model_tokenizer = _compared_model(folder, manifest, tokenizer, scoring, pcfg.train.seed)
            if model_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise LmcError(f"{name} has another tokenizer than {names[reference]}: perplexities over different "
                               "vocabularies cannot be compared")
            scores = score_lm(model, data.validation, collate, scoring, 64)
            rows.append({"name": name, "path": str(folder), "made_by": manifest.made_by(),
                         "backend": served_by(folder), "params": count_params(model),
                         "size_mb": round(weights_size_bytes(folder) / 1e6, 2), "metric": "perplexity",
                         "value": round(scores["perplexity"], 4), "metrics": scores})
            log.info("%s: perplexity %.2f", name, scores["perplexity"])
            models.append(model)
    _time_side_by_side(rows, models, collate, data, cfg.latency_repeats, threads, scoring == "clm")
    return rows, {"task": pcfg.objective, "data": {"source": source, **data.record}, "seq_len": pcfg.data.max_length,
                  "lower_is_better": True}
