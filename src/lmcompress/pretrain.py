"""`lmcompress pretrain`: self-supervised training on raw text — MLM (+ NSP or SOP) for encoders, CLM for GPT-2.

Flow: read the corpus as documents -> split by document (seeded) into train/validation -> (optionally) train a
vocabulary on the training documents -> tokenise once (cached) -> build examples (packed blocks or sentence
pairs) -> the one training loop (`train.fit`) with validation perplexity each epoch -> a run dir holding a plain
transformers checkpoint (*ForPreTraining / *ForMaskedLM / *ForCausalLM) with its tokenizer.

The validation set is fixed: built from the held-out documents and masked once with a seed derived from the split
seed only, so perplexity before and after training, and across runs with the same tokenizer, is measured on the
very same masked tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import PretrainConfig, from_dict, to_dict
from .data import lm
from .data.corpora import Document, has_cjk, load_corpus
from .errors import LmcError
from .evaluate import count_params, measure_latency, weights_size_bytes
from .models.load import load_for_pretraining, load_tokenizer, model_family, resolve
from .objectives import ENCODER_FAMILIES, HEADS, lm_forward, pretraining_loss, token_loss_sum
from .runs import (METRICS, RunDir, is_main_process, num_processes, read_run_manifest, stage_manifest,
                   training_record, write_json_atomic)
from .train import fit

log = logging.getLogger("lmcompress")

INITIAL_METRICS = "initial_metrics.json"
PAIR_METRIC = {"mlm+nsp": "nsp_accuracy", "mlm+sop": "sop_accuracy"}


@dataclass
class LMData:
    train: list[dict[str, np.ndarray]]
    validation: list[dict[str, np.ndarray]]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_train_tokens(self) -> float:
        return self.record["tokens"]["train"] / len(self.train)


# ------------------------------------------------------------------------------------------------ checks


def check_objective(family: str, objective: str, tokenizer=None) -> None:
    """Reject model/objective combinations transformers has no heads for, before any slow work."""
    if objective == "clm":
        if family in ENCODER_FAMILIES:
            raise LmcError(f"--objective clm needs a causal LM (a gpt2 preset or a GPT-2-style folder); {family} is "
                           "an encoder: use mlm, mlm+nsp or mlm+sop")
        return
    if family not in HEADS:
        raise LmcError(f"--objective {objective} needs an encoder ({', '.join(ENCODER_FAMILIES)}); {family} is not "
                       "one (use --objective clm for causal LMs)")
    if objective != "mlm" and HEADS[family][1] is None:
        raise LmcError(f"{family} has no sentence-pair head in transformers; use --objective mlm (RoBERTa's recipe)")
    if tokenizer is not None and tokenizer.mask_token_id is None:
        raise LmcError("the tokenizer has no mask token, so it cannot be used for masked-LM pre-training")


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


def _examples_fingerprint(examples: list[dict[str, np.ndarray]]) -> str:
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
        "validation_fingerprint": _examples_fingerprint(validation),
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
    device = next(model.parameters()).device
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


# ------------------------------------------------------------------------------------------------ stage


def _cache_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.cache_dir or Path.home() / ".cache" / "lmcompress").expanduser()


def _corpus(cfg: PretrainConfig) -> tuple[list[Document], str, list[int], list[int]]:
    documents, source = load_corpus(cfg.data.data, cfg.data.text_column)
    if cfg.data.max_documents:
        documents = documents[:cfg.data.max_documents]
    train_ids, validation_ids = split_documents(documents, cfg.data.validation_fraction, cfg.data.split_seed)
    return documents, source, train_ids, validation_ids


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    source = resolve(cfg.model, cfg.tokenizer, new_vocab=cfg.train_tokenizer is not None)
    family = model_family(source)
    check_objective(family, cfg.objective)
    if cfg.train_tokenizer and source.preset is None:
        raise LmcError("--train-tokenizer makes a new vocabulary, so the model must start from a preset "
                       f"(e.g. {family}-4l-256h); a pretrained model keeps its own tokenizer")
    documents, corpus_source, train_ids, validation_ids = _corpus(cfg)
    log.info("%s: %d documents (%d train / %d validation)", cfg.data.data, len(documents), len(train_ids),
             len(validation_ids))
    if cfg.train_tokenizer and cfg.resume:
        tokenizer = load_tokenizer(run.partial)  # the vocabulary the checkpoint was trained with
    elif cfg.train_tokenizer:
        from .data.vocab import train_tokenizer

        tokenizer = train_tokenizer([documents[i] for i in train_ids], cfg.train_tokenizer, family)
    else:
        tokenizer = load_tokenizer(source.tokenizer_path)
    check_objective(family, cfg.objective, tokenizer)
    model = load_for_pretraining(source, tokenizer, cfg.objective, cfg.train.seed)

    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        if cfg.train_tokenizer and is_main_process():
            tokenizer.save_pretrained(run.partial)
        data = prepare_data(cfg, tokenizer, documents, train_ids, validation_ids, _cache_root(cfg))
        log.info("%s examples: %d train, %d validation (%s)", cfg.objective, len(data.train), len(data.validation),
                 ", ".join(f"{k} {v:,} tokens" for k, v in data.record["tokens"].items()))
        validation_collate = collator(tokenizer, cfg.objective)

        def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
            return score_lm(m, data.validation, validation_collate, cfg.objective, cfg.train.eval_batch_size)

        def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return pretraining_loss(lm_forward(m, batch, cfg.objective), batch, cfg.objective)

        initial = initial_scores(run.partial, cfg.resume, lambda: evaluate_fn(model))

        result = fit(model, training_set(cfg, tokenizer, data), collator(tokenizer, cfg.objective), cfg.train,
                     loss_fn=loss_fn, evaluate_fn=evaluate_fn, monitor="perplexity", higher_is_better=False,
                     run_folder=run.partial, resume=cfg.resume, description=f"pretrain {Path(cfg.out).name}")
        return finish_lm_run(run, cfg, model, tokenizer, data, result, initial, lambda train: stage_manifest(
            "pretrain", str(source.path) if source.path else source.spec, to_dict(cfg),
            data={"source": corpus_source, "seed": cfg.data.split_seed, **data.record},
            task={"type": cfg.objective, "family": family}, train=train, processes=num_processes()))


def initial_scores(folder: Path, resume: bool, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Validation scores before training, kept in the run so a resumed run reports the same 'before'."""
    path = folder / INITIAL_METRICS
    if resume and path.is_file():
        initial = json.loads(path.read_text(encoding="utf-8"))
    else:
        initial = evaluate()
        if is_main_process():
            write_json_atomic(path, initial)
    log.info("before training: validation %s", ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    return initial


def finish_lm_run(run: RunDir, cfg: PretrainConfig, model: torch.nn.Module, tokenizer, data: LMData, result,
                  initial: dict[str, float], manifest: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Save the trained LM and its tokenizer, write metrics.json (the kept weights' validation scores, latency) and
    the manifest built by `manifest(train record)`, then commit the run -> the summary (empty on non-main ranks)."""
    model = model.cpu()
    tokens_per_s = result.examples_per_s * data.mean_train_tokens
    metrics: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if is_main_process():
        model.save_pretrained(run.partial)
        tokenizer.save_pretrained(run.partial)
        scores = result.kept_scores("perplexity", False, cfg.train.keep_best)
        metrics = lm_metrics_payload(cfg, model, tokenizer, data, run.partial, scores)
        metrics["metrics_before"] = initial
        write_json_atomic(run.partial / METRICS, metrics)
        record = manifest(training_record(result) | {"tokens_per_s": round(tokens_per_s, 1)})
    final = run.commit(record)
    return metrics | {"path": str(final), "wall_time_s": round(result.wall_time_s, 1),
                      "tokens_per_s": round(tokens_per_s, 1)} if metrics else {}


def run_validation_set(folder: Path) -> tuple[PretrainConfig, Any, LMData, str]:
    """A pre-training run's fixed validation set, rebuilt from its recorded config and its own tokenizer
    -> (config, tokenizer, data, corpus source)."""
    manifest = read_run_manifest(folder) or {}
    # a distill-lm run records the equivalent pre-training config of its data under lm_config
    recorded = manifest.get("lm_config") or manifest.get("config") or {}
    cfg = from_dict(PretrainConfig, recorded, where=f"{folder}/lmcompress.json config")
    tokenizer = load_tokenizer(folder)
    documents, source, train_ids, validation_ids = _corpus(cfg)
    data = prepare_data(cfg, tokenizer, documents, train_ids, validation_ids, _cache_root(cfg))
    expected = manifest.get("data", {}).get("validation_fingerprint")
    if expected and expected != data.record["validation_fingerprint"]:
        log.warning("the validation examples differ from those recorded at training time (corpus changed?)")
    return cfg, tokenizer, data, source


def evaluate_lm_run(folder: Path, latency: bool = True, latency_repeats: int = 10) -> dict[str, Any]:
    """`lmcompress evaluate` on a pre-training run: rebuild its fixed validation set and score it."""
    cfg, tokenizer, data, _ = run_validation_set(folder)
    model = load_for_pretraining(resolve(str(folder)), tokenizer, cfg.objective, cfg.train.seed)
    scores = score_lm(model, data.validation, collator(tokenizer, cfg.objective), cfg.objective, 64)
    return lm_metrics_payload(cfg, model, tokenizer, data, folder, scores, latency_repeats if latency else None)
