"""What every combination of the sweep (test_sweep.py) must do: the refusals, as rules over its axes. The first rule
that matches a combination gives words its one error line must contain; a combination no rule matches must run.

So a regression fails either way: a supported combination that starts refusing, or a refusal that starts running
(or refuses for another reason). A new refusal is added here with the reason it is right."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmcompress import catalog

Axes = dict[str, Any]

GPU = torch.cuda.is_available()
FP16_NEEDS_GPU = "--precision fp16 needs a GPU"
# a preset without --tokenizer takes minilm-l6's vocabulary, from the zoo (`scripts/setup.sh --with-zoo`); CI has none
ZOO_VOCABULARY = catalog.get("minilm-l6").installed()
NO_ZOO_VOCABULARY = "zoo entry 'minilm-l6' is not installed"


def _fp16(axes: Axes) -> bool:
    return axes.get("precision") == "fp16" and not GPU


def _encoder(axes: Axes) -> bool:
    return axes["family"] != "gpt2"


# (stage, when, the words of its refusal), checked in order: a stage refuses for the first reason it meets
REFUSALS: list[tuple[str, Callable[[Axes], bool], str]] = [
    ("pretrain", lambda a: a["tokenizer"] == "default" and not ZOO_VOCABULARY, NO_ZOO_VOCABULARY),
    ("finetune", lambda a: a["tokenizer"] == "default" and not ZOO_VOCABULARY, NO_ZOO_VOCABULARY),
    # pre-training heads: transformers has MLM heads for encoders, an LM head for GPT-2, no pair head for RoBERTa
    ("pretrain", lambda a: not _encoder(a) and a["objective"] != "clm", "needs an encoder"),
    ("pretrain", lambda a: _encoder(a) and a["objective"] == "clm", "--objective clm needs a causal LM"),
    ("pretrain", lambda a: a["family"] == "roberta" and a["objective"] in ("mlm+nsp", "mlm+sop"),
     "roberta has no sentence-pair head"),
    ("pretrain", _fp16, FP16_NEEDS_GPU),
    # a static student has no layers to match, ALBERT conversion reads BERT's layout
    ("distill", lambda a: a["student"].startswith("static") and a["intermediate_epochs"],
     "a static student has no layers or hidden states"),
    ("distill", lambda a: a["student"].startswith("albert") and a["family"] != "bert",
     "ALBERT conversion needs a BERT teacher"),
    ("distill", lambda a: _fp16(a) and not a["student"].startswith("static"), FP16_NEEDS_GPU),
    ("distill-lm", lambda a: _encoder(a) and a["top_k"], "dynamic masking"),
    ("prune-lm", _encoder, "prune-lm prunes causal LMs"),
    ("export", lambda a: a["precision"] == "bf16", "--precision bf16 does not apply to --format onnx"),
    ("export", lambda a: a["precision"] in ("q8_0", "q4_0", "q4_m"), "does not apply to --format onnx"),  # gguf only
    ("auto", lambda a: a["family"] == "gpt2", "auto cuts encoder students from the teacher's layers"),
]


def expected_outcome(stage: str, axes: Axes) -> str:
    """'ran', or 'refused: <words of the one error line>'."""
    for refusing_stage, when, words in REFUSALS:
        if refusing_stage == stage and when(axes):
            return f"refused: {words}"
    return "ran"
