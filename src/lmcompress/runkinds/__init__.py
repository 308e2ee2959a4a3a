"""Kinds of run: a task model, a language model, a sentence encoder. Each kind knows how its runs are scored
(`evaluate`: the metrics.json payload), how they are compared side by side (`compare_rows`: scores, latency
batches and timing), and which direction of its metric is better; each module also holds the end of the stages
that leave such a run (`finish_run`, `finish_lm_run`, over runs.finish_stage). evaluate and compare pick the kind
from the run's lmcompress.json and ask it; nothing else branches on the kind of run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..runs.manifest import Manifest
from . import embedding, lm, task


@dataclass(frozen=True)
class RunKind:
    name: str
    lower_is_better: bool  # perplexity: lower; accuracy, F1, spearman: higher
    evaluate: Callable[..., dict[str, Any]]  # (folder, manifest, EvaluateConfig) -> metrics.json payload
    compare_rows: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]  # (cfg, folders, names, manifests,
    # teacher index, threads) -> (report rows, report context)


TASK = RunKind("task", False, task.evaluate, task.compare_rows)
LANGUAGE_MODEL = RunKind("language-model", True, lm.evaluate, lm.compare_rows)
SENTENCE_EMBEDDING = RunKind("sentence-embedding", False, embedding.evaluate, embedding.compare_rows)


def kind_of(manifest: Manifest) -> RunKind:
    """The kind of one run, from its lmcompress.json (a plain checkpoint without one is a task model)."""
    if manifest.is_embedding_run:
        return SENTENCE_EMBEDDING
    return LANGUAGE_MODEL if manifest.is_language_model else TASK


def kind_for_comparison(manifests: list[Manifest], teacher_index: int) -> RunKind:
    """The kind a comparison scores by: sentence embedding when any run is one (plain encoders, such as their
    teacher, are compared on its pairs), a language model when any run is one (a plain LM, such as the teacher
    smollm2-135m, is scored on its validation blocks), else the teacher's kind."""
    if any(m.is_embedding_run for m in manifests):
        return SENTENCE_EMBEDDING
    if any(m.is_language_model for m in manifests):
        return LANGUAGE_MODEL
    return kind_of(manifests[teacher_index])


__all__ = ["LANGUAGE_MODEL", "SENTENCE_EMBEDDING", "TASK", "RunKind", "kind_for_comparison", "kind_of"]
