"""The language-model run kind (pretrain and distill-lm runs): corpus split, examples and the fixed validation set,
perplexity scoring, the metrics.json payload and the end of an LM stage.

The validation set is fixed: built from the held-out documents and masked once with a seed derived from the split
seed only, so perplexity before and after training, and across runs with the same tokenizer, is measured on the
very same masked tokens.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import CompareConfig, EvaluateConfig, PretrainConfig, from_dict
from ..data import lm
from ..data.corpora import Document, has_cjk, load_corpus
from ..errors import LmcError
from ..backends.gguf_file import GGUF_FILE, load_gguf
from ..backends.onnx import MODEL_FILE, OnnxClassifier
from ..measure import (LATENCY_BATCHES, count_params, generation_speed, measure_latency, time_side_by_side,
                       weights_size_bytes)
from ..models.load import load_for_pretraining, load_lm_teacher, load_tokenizer, resolve
from ..objectives import lm_forward, token_loss_sum
from ..runs.manifest import Manifest, TrainingRecord, read_manifest
from ..runs.rundir import RunDir, finish_stage
from ..timing import torch_threads

log = logging.getLogger("lmcompress")

PAIR_METRIC = {"mlm+nsp": "nsp_accuracy", "mlm+sop": "sop_accuracy"}
GENERATION_PROMPT = 32  # tokens of the prompt generation speed is timed on


@dataclass
class LMData:
    train: list[dict[str, np.ndarray]]
    validation: list[dict[str, np.ndarray]]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_train_tokens(self) -> float:
        return self.record["tokens"]["train"] / len(self.train)


# ------------------------------------------------------------------------------------------------ data


def split_documents(documents: list[Document], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded document-level split -> (train indices, validation indices), both in corpus order."""
    if len(documents) < 2:
        raise LmcError("the corpus has a single document; pre-training needs at least 2 (one is held out)")
    order = np.random.default_rng(seed).permutation(len(documents))
    n_validation = min(len(documents) - 1, max(1, math.ceil(len(documents) * fraction)))
    return sorted(order[n_validation:].tolist()), sorted(order[:n_validation].tolist())


def use_chinese_words(cfg: PretrainConfig, documents: list[Document]) -> bool:
    """jieba word boundaries: asked for, or (auto) when most of a sample of the text is Chinese."""
    if cfg.objective == "clm" or cfg.chinese_words == "off" or not cfg.whole_word:
        return False
    if cfg.chinese_words == "jieba":
        return True
    sample = "".join(s for d in documents[:200] for s in d)[:20000]
    return bool(sample) and sum(has_cjk(c) for c in sample) / len(sample) > 0.3


def masking_options(cfg: PretrainConfig) -> dict[str, Any]:
    return {"mask_prob": cfg.mask_prob, "whole_word": cfg.whole_word, "max_ngram": cfg.max_ngram}


def build_examples(cfg: PretrainConfig, documents: list[list[lm.Segment]], special: lm.SpecialIds,
                   rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    length = cfg.data.max_length
    if cfg.objective == "clm":
        return lm.clm_blocks(documents, length, special)
    if cfg.objective == "mlm":
        return lm.mlm_blocks(documents, length, special)
    return lm.sentence_pairs(documents, length, special, cfg.objective.split("+")[1], rng, cfg.short_seq_prob)


def examples_fingerprint(examples: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.get("masked_ids", example["input_ids"]).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def prepare_data(cfg: PretrainConfig, tokenizer, documents: list[Document], train_ids: list[int],
                 validation_ids: list[int], cache_root: Path) -> LMData:
    """Tokenise (cached) and build the training examples and the fixed, masked validation set."""
    chinese = use_chinese_words(cfg, documents)
    tokenized = lm.tokenize_documents(documents, tokenizer, chinese, cache_root, cfg.data.num_proc)
    segments = lm.as_segments(tokenized)
    special = lm.SpecialIds.of(tokenizer)
    train_docs = [segments[i] for i in train_ids if segments[i]]
    validation_docs = [segments[i] for i in validation_ids if segments[i]]
    if not train_docs or not validation_docs:
        raise LmcError("after tokenisation the train or validation documents are empty; add text to the corpus")
    train = build_examples(cfg, train_docs, special, np.random.default_rng(cfg.train.seed))
    validation = build_examples(cfg, validation_docs, special, np.random.default_rng(cfg.data.split_seed + 1))
    validation = validation[:cfg.data.max_validation_examples]
    if not train:
        raise LmcError("the corpus yields no training examples (too short for --max-length, or SOP documents with a "
                       "single sentence each)")
    if not validation:
        raise LmcError("the held-out documents yield no validation examples; raise --validation-fraction")
    if cfg.objective != "clm":
        if cfg.masking == "static":
            lm.mask_statically(train, np.random.default_rng(cfg.train.seed + 1), special, len(tokenizer),
                               **masking_options(cfg))
        lm.mask_statically(validation, np.random.default_rng(cfg.data.split_seed + 2), special, len(tokenizer),
                           **masking_options(cfg))
    record = {
        "documents": {"train": len(train_docs), "validation": len(validation_docs)},
        "examples": {"train": len(train), "validation": len(validation)},
        "tokens": {"train": int(sum(len(e["input_ids"]) for e in train)),
                   "validation": int(sum(len(e["input_ids"]) for e in validation))},
        "chinese_word_segmentation": "jieba" if chinese else None,
        "validation_fingerprint": examples_fingerprint(validation),
    }
    if cfg.objective in PAIR_METRIC:
        record["pair_label_share"] = round(float(np.mean([int(e["pair_label"]) for e in train])), 4)
    return LMData(train, validation, record)


def collator(tokenizer, objective: str) -> lm.PretrainCollator:
    return lm.PretrainCollator(objective, lm.SpecialIds.of(tokenizer))


def training_set(cfg: PretrainConfig, tokenizer, data: LMData) -> torch.utils.data.Dataset | list:
    """The training examples; with dynamic masking, wrapped so that each epoch draws fresh masks."""
    if cfg.objective == "clm" or cfg.masking == "static":
        return data.train
    return lm.DynamicMasking(data.train, cfg.train.seed, lm.SpecialIds.of(tokenizer), len(tokenizer),
                             **masking_options(cfg))


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


def cache_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.cache_dir or Path.home() / ".cache" / "lmcompress").expanduser()


def corpus(cfg: PretrainConfig) -> tuple[list[Document], str, list[int], list[int]]:
    documents, source = load_corpus(cfg.data.data, cfg.data.text_column)
    if cfg.data.max_documents:
        documents = documents[:cfg.data.max_documents]
    train_ids, validation_ids = split_documents(documents, cfg.data.validation_fraction, cfg.data.split_seed)
    return documents, source, train_ids, validation_ids


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
    if cfg.latency and pcfg.objective == "clm" and hasattr(model, "generate"):
        payload["generation"] = generation_speed({"model": model}, generation_prompt(data))["model"]
    return payload


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
