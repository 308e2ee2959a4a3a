"""Python API: one function per CLI subcommand, taking the same names as the flags.

    import lmcompress
    metrics = lmcompress.finetune(model="minilm-l6", data="rotten-tomatoes", out="runs/teacher", max_length=64)
    lmcompress.evaluate(model="runs/teacher")
"""

from __future__ import annotations

from typing import Any

from . import catalog
from .config import (CompareConfig, DistillConfig, EmbeddingDistillConfig, EvaluateConfig, ExportConfig,
                     FinetuneConfig, LMDistillConfig, PretrainConfig, PruneConfig, QuantizeConfig, build_config,
                     flat_to_nested)
from .models import presets


def pretrain(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Self-supervised pre-training (mlm | mlm+nsp | mlm+sop | clm) on raw text; returns validation metrics."""
    from .pretrain import pretrain as run_pretrain

    return run_pretrain(build_config(PretrainConfig, config, flat_to_nested(PretrainConfig, options), "pretrain"))


def finetune(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Fine-tune a model on a labelled task; returns the test metrics (also in <out>/metrics.json)."""
    from .finetune import finetune as run_finetune

    cfg = build_config(FinetuneConfig, config, flat_to_nested(FinetuneConfig, options), "finetune")
    return run_finetune(cfg)


def evaluate(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Score a run on a split (default test); returns and writes metrics.json."""
    from .evaluate import evaluate_run

    cfg = build_config(EvaluateConfig, config, flat_to_nested(EvaluateConfig, options), "evaluate")
    return evaluate_run(cfg)


def distill(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Distil a fine-tuned teacher into a student; returns the student's test metrics."""
    from .distill.stage import distill as run_distill

    cfg = build_config(DistillConfig, config, flat_to_nested(DistillConfig, options), "distill")
    return run_distill(cfg)


def distill_lm(config: str | None = None, **options: Any) -> dict[str, Any]:
    """General (MLM) or causal-LM distillation on raw text; returns the student's validation perplexity."""
    from .distill.lm import distill_lm as run_distill_lm

    cfg = build_config(LMDistillConfig, config, flat_to_nested(LMDistillConfig, options), "distill-lm")
    return run_distill_lm(cfg)


def distill_embeddings(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Bi-encoder (sentence-embedding) distillation on raw text; returns the student's pair-similarity scores."""
    from .distill.embeddings import distill_embeddings as run_distill_embeddings

    cfg = build_config(EmbeddingDistillConfig, config, flat_to_nested(EmbeddingDistillConfig, options),
                       "distill-embeddings")
    return run_distill_embeddings(cfg)


def compare(*runs: str, config: str | None = None, **options: Any) -> dict[str, Any]:
    """Score and time runs side by side; writes report.{md,html,json} and pareto.png to `out`."""
    from .report import compare as run_compare

    if runs:
        options["runs"] = list(runs)
    cfg = build_config(CompareConfig, config, flat_to_nested(CompareConfig, options), "compare")
    return run_compare(cfg)


def prune(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Structured pruning by importance, then recovery; returns the pruned model's test metrics."""
    from .shrink.prune import prune as run_prune

    return run_prune(build_config(PruneConfig, config, flat_to_nested(PruneConfig, options), "prune"))


def quantize(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Int8 quantization (dynamic-int8 | onnx-int8 | static-int8); returns the quantized model's test metrics."""
    from .shrink.quantize import quantize as run_quantize

    return run_quantize(build_config(QuantizeConfig, config, flat_to_nested(QuantizeConfig, options), "quantize"))


def export(config: str | None = None, **options: Any) -> dict[str, Any]:
    """Validated ONNX export (fp32 | fp16); returns the exported model's test metrics."""
    from .shrink.quantize import export as run_export

    return run_export(build_config(ExportConfig, config, flat_to_nested(ExportConfig, options), "export"))


def zoo() -> list[dict[str, Any]]:
    """Offline models and datasets with their install state, plus the architecture presets."""
    rows = []
    for entry in catalog.ENTRIES.values():
        path = entry.locate()
        rows.append({"name": entry.name, "kind": entry.kind, "installed": path is not None,
                     "size_bytes": entry.size_bytes(), "path": str(path) if path else None,
                     "install": entry.install, "description": entry.description})
    for family in presets.FAMILIES:
        for size in presets.STANDARD:
            rows.append({"name": f"{family}-{size}", "kind": "preset", "installed": True, "size_bytes": None,
                         "path": None, "install": "", "description": f"random-init {family} architecture"})
    return rows


def run(recipe: str | dict[str, Any], out: str | None = None, overwrite: bool = False,
        only: list[str] | None = None) -> dict[str, Any]:
    """Run a YAML recipe (path, built-in name like "demo", or the parsed mapping): complete steps are skipped."""
    from .pipeline import run_recipe

    return run_recipe(recipe, out=out, overwrite=overwrite, only=only)


def demo(quick: bool = False, out: str = "runs/demo", overwrite: bool = False) -> dict[str, Any]:
    """The built-in offline demo (see lmcompress.demo)."""
    from .demo import run_demo

    return run_demo(quick=quick, out=out, overwrite=overwrite)
