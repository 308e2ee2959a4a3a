"""`quantize` and `export --format onnx` of causal-LM runs (pretrain --objective clm, distill-lm, prune-lm): the
next-token logits [B, T, V] as an ONNX graph, validated against PyTorch on the run's own validation blocks (real
text, padded), then optionally int8 (ONNX Runtime dynamic, or static calibrated on training blocks); the perplexity
of the written graph is re-scored on the validation set, never copied. Masked-LM runs are refused in one line: their
MLM head runs on the masked positions only, which a graph of fixed outputs does not express."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ..backends import onnx_io
from ..backends.onnx import MODEL_FILE, OnnxClassifier, require_onnx
from ..config import ExportConfig, QuantizeConfig, to_dict
from ..errors import LmcError
from ..data.pretraining import collator
from ..runkinds.lm import lm_metrics_payload, run_validation_set, score_lm
from ..runs.manifest import METRICS, TaskRecord, read_manifest, stage_manifest
from ..runs.rundir import RunDir, finish_stage

log = logging.getLogger("lmcompress")

CHECK_BLOCKS = 8  # validation blocks per check batch
CALIBRATION_BLOCKS = 32  # static-int8: ORT's calibrator keeps every intermediate output, [B, T, V] logits included
# fp16 activations move the logits of a vocabulary of tens of thousands by more than a classifier's 5e-2
FP16_LOGIT_TOLERANCE = 0.5


def lm_objective(spec: str) -> str | None:
    """The LM objective of a run folder (clm, mlm, ...), None for any other run."""
    manifest = read_manifest(Path(spec).expanduser())
    return manifest.task_type if manifest.is_language_model else None


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def onnx_lm(cfg: ExportConfig | QuantizeConfig, stage: str) -> dict[str, Any]:
    """Export (fp32 / fp16) or quantize (onnx-int8 / static-int8) a causal-LM run into an ONNX run."""
    method = getattr(cfg, "method", None)
    if lm_objective(cfg.model) != "clm":
        raise LmcError(f"{cfg.model} is a masked-LM run; ONNX export and int8 cover causal-LM and task runs "
                       "(fine-tune it on a task first)")
    if method not in (None, "onnx-int8", "static-int8") or getattr(cfg, "format", "onnx") != "onnx":
        raise LmcError("causal-LM runs go to ONNX (export --format onnx or gguf, quantize --method onnx-int8 or "
                       "static-int8); OpenVINO covers task runs")
    run = RunDir(cfg.out)
    run.check(cfg.overwrite, None)
    require_onnx()
    source = Path(cfg.model).expanduser()
    pcfg, tokenizer, data, corpus_source = run_validation_set(source)
    model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True).eval()
    model.config.use_cache = False  # the graph returns logits only
    collate = collator(tokenizer, "clm")
    checks = [_inputs(collate(data.validation[:CHECK_BLOCKS])), _inputs(collate(data.validation[:1]))]
    precision = getattr(cfg, "precision", "fp32")
    tolerance = cfg.tolerance or (FP16_LOGIT_TOLERANCE if precision == "fp16" else onnx_io.DEFAULT_TOLERANCE["fp32"])
    run.begin(cfg.overwrite, False)
    with run.guard():
        graph = onnx_io.export_onnx(model, checks[0], run.partial / "fp32.onnx")
        validation = onnx_io.validate(model, graph, checks, onnx_io.DEFAULT_TOLERANCE["fp32"])
        log.info("ONNX export validated: max |logit diff| %.2e on %s", validation["max_abs_logit_diff"],
                 validation["batches"])
        record: dict[str, Any] = {"export_validation": validation}
        target = run.partial / "out.onnx"
        if precision == "fp16":
            onnx_io.to_fp16(graph, target)
            record["validation"] = onnx_io.validate(model, target, checks, tolerance)
        elif method == "static-int8":
            calibration = [_inputs(collate(data.train[i:i + 4]))
                           for i in range(0, min(len(data.train), CALIBRATION_BLOCKS), 4)]
            onnx_io.quantize_static_int8(graph, target, calibration)
            record["calibration_examples"] = sum(len(b["input_ids"]) for b in calibration)
        elif method == "onnx-int8":
            onnx_io.quantize_dynamic_int8(graph, target)
        else:
            shutil.copy2(graph, target)
        graph.unlink()
        target.rename(run.partial / MODEL_FILE)
        shutil.copy2(source / "config.json", run.partial / "config.json")
        tokenizer.save_pretrained(run.partial)
        served = OnnxClassifier(run.partial / MODEL_FILE)
        parent = _parent_perplexity(source)

        def write(folder: Path) -> dict[str, Any]:
            scores = score_lm(served, data.validation, collate, "clm", 16)
            payload = lm_metrics_payload(pcfg, served, tokenizer, data, folder, scores)
            if parent is not None:
                payload["delta_vs_parent"] = round(scores["perplexity"] - parent, 6)
            return payload

        extra = {"quantization": record | {"method": method}} if method else {
            "export": record | {"format": "onnx", "precision": precision}}
        return finish_stage(run, write, lambda metrics: stage_manifest(
            stage, str(source), to_dict(cfg), data={"source": corpus_source, **data.record},
            task=TaskRecord("clm", family=model.config.model_type), lm_config=to_dict(pcfg), **extra))


def _parent_perplexity(source: Path) -> float | None:
    path = source / METRICS
    try:
        return json.loads(path.read_text(encoding="utf-8"))["metrics"]["perplexity"] if path.is_file() else None
    except (ValueError, KeyError, TypeError):
        return None
