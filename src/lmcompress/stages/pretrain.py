"""`lmcompress pretrain`: self-supervised training on raw text — MLM (+ NSP or SOP) for encoders, CLM for GPT-2.

Flow: read the corpus as documents -> split by document (seeded) into train/validation -> (optionally) train a
vocabulary on the training documents -> tokenise once (cached) -> build examples (packed blocks or sentence
pairs) -> the one training loop (`training.fit`) with validation perplexity each epoch -> a run dir holding a plain
transformers checkpoint (*ForPreTraining / *ForMaskedLM / *ForCausalLM) with its tokenizer. The data is
`data/pretraining.py`'s; scoring and the end of the stage are the language-model run kind's (`runkinds/lm.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import PretrainConfig, to_dict
from ..data.vocab import train_tokenizer
from ..errors import LmcError
from ..models.families import check_objective
from ..models.load import load_for_pretraining, load_tokenizer, model_family, resolve
from ..objectives import lm_forward, pretraining_loss
from ..data.pretraining import cache_root, collator, corpus, prepare_data, training_set
from ..runkinds.lm import finish_lm_run, score_lm
from ..distributed import is_main_process, num_processes
from ..runs.manifest import TaskRecord, stage_manifest
from ..runs.rundir import RunDir, initial_scores
from ..training import fit

log = logging.getLogger("lmcompress")


def _tokenizer(cfg: PretrainConfig, source, family: str, run: RunDir, train_documents: list):
    """The model's own tokenizer, or (--train-tokenizer) one trained on the training documents, or on a resumed
    run the one the checkpoint was trained with."""
    if cfg.train_tokenizer and cfg.resume:
        return load_tokenizer(run.partial)
    if cfg.train_tokenizer:
        return train_tokenizer(train_documents, cfg.train_tokenizer, family)
    return load_tokenizer(source.tokenizer_path)


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
    documents, corpus_source, train_ids, validation_ids = corpus(cfg)
    log.info("%s: %d documents (%d train / %d validation)", cfg.data.data, len(documents), len(train_ids),
             len(validation_ids))
    tokenizer = _tokenizer(cfg, source, family, run, [documents[i] for i in train_ids])
    check_objective(family, cfg.objective, tokenizer)
    model = load_for_pretraining(source, tokenizer, cfg.objective, cfg.train.seed)

    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        if cfg.train_tokenizer and is_main_process():
            tokenizer.save_pretrained(run.partial)
        data = prepare_data(cfg, tokenizer, documents, train_ids, validation_ids, cache_root(cfg))
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
            task=TaskRecord(cfg.objective, family=family), train=train, processes=num_processes()))
