"""Which task head a checkpoint carries, and the transformers auto class that loads it."""

from __future__ import annotations

from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification

HEAD_SUFFIXES = {"ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering"}


def head_class(head: str | None):
    """The transformers auto class of a head: "token-classification" (per token), "question-answering" (span start
    and end per token) or anything else (per sequence: classification, regression)."""
    return {"token-classification": AutoModelForTokenClassification,
            "question-answering": AutoModelForQuestionAnswering}.get(head or "", AutoModelForSequenceClassification)


def saved_head(config) -> str | None:
    """"token-classification" / "question-answering" for those heads (from config.architectures), else None."""
    for architecture in getattr(config, "architectures", None) or []:
        for suffix, head in HEAD_SUFFIXES.items():
            if str(architecture).endswith(suffix):
                return head
    return None


def task_head(task: str) -> str | None:
    """The head a task trains: saved_head's value for token and span tasks, None for sequence tasks."""
    return task if task in HEAD_SUFFIXES.values() else None
