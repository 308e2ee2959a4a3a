"""ONNX export with validation, and ONNX Runtime int8 quantization (sessions: backends/onnx.py).

Export uses torch's `torch.export`-based exporter (dynamic batch and sequence axes). The older TorchScript exporter
was measured to give wrong logits for transformers 5 BERT models with padding (max |diff| 2.3), so it is not used;
every export is validated against PyTorch on real, padded batches before anything is written.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .onnx import OnnxClassifier, require_onnx
from ..errors import LmcError
from ..models.heads import saved_head
from ..models.load import first_line

log = logging.getLogger("lmcompress")

QUANTIZED_OPS = ["MatMul", "Gather"]  # Linear layers, and the embedding tables (the bulk of the file size)
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print pages of progress and deprecation warnings; keep only our own log lines."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(previous)


def output_names(config) -> list[str]:
    """The graph's outputs, named as transformers names them: start_logits and end_logits for question answering
    ([B, T] each), else logits ([B, C] per sequence, [B, T, C] per token)."""
    return ["start_logits", "end_logits"] if saved_head(config) == "question-answering" else ["logits"]


def export_onnx(model: nn.Module, sample: dict[str, torch.Tensor], path: Path) -> Path:
    """Trace `model` on `sample` (input_ids, attention_mask[, token_type_ids]: [B, T]) to `path` with dynamic B, T."""
    require_onnx()
    model = model.eval().cpu()
    # inputs the model names (DistilBERT and MPNet take no token_type_ids: a BERT tokenizer's would reach their
    # **kwargs, which torch.export cannot trace)
    named = {name for name, p in inspect.signature(model.forward).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    sample = {name: value for name, value in sample.items() if name in named}
    # sdpa exports a NaN guard (IsNaN + Where) that cost ORT 16 ms of 82 at batch 32; the eager graph has none
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, "eager"):
        model.set_attn_implementation("eager")
    # decoder heads (GPT-2, Llama with a classification head) return their KV cache too, which torch.export cannot
    # carry out of the graph: the graph returns the logits only
    cached = getattr(model.config, "use_cache", None)
    if cached:
        model.config.use_cache = False
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: seq} for name in sample}
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(model, (), kwargs=dict(sample), dynamo=True, dynamic_shapes=shapes,
                                        input_names=list(sample), output_names=output_names(model.config),
                                        verbose=False)
            program.save(str(path))
    except Exception as exc:  # the exporter raises many types; the first line names the unsupported op
        raise LmcError(f"ONNX export of {type(model).__name__} failed: {first_line(exc)}") from None
    finally:
        if previous not in (None, "eager"):
            model.set_attn_implementation(previous)
        if cached:
            model.config.use_cache = cached
    return path


TOLERANCE_ADVICE = "nothing was written (raise --tolerance only if you accept the difference)"


def validate(model: nn.Module, path: Path, batches: list[dict[str, torch.Tensor]], tolerance: float,
             advice: str = TOLERANCE_ADVICE) -> dict[str, Any]:
    """Max |logit difference| between ONNX Runtime and PyTorch on real batches; LmcError above `tolerance`."""
    return validate_with(model, OnnxClassifier(path), batches, tolerance, "ONNX", advice)


def validate_with(model: nn.Module, served: nn.Module, batches: list[dict[str, torch.Tensor]], tolerance: float,
                  runtime: str, advice: str = TOLERANCE_ADVICE) -> dict[str, Any]:
    """Max |logit difference| between `served` (an ONNX Runtime or OpenVINO model) and PyTorch on real batches;
    LmcError above `tolerance`, its message ending in `advice` (what the calling command offers)."""
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            out, got_all = model(**batch), served(**batch)
            for name in output_names(model.config):
                got, expected = getattr(got_all, name).float().numpy(), getattr(out, name).float().numpy()
                if got.shape != expected.shape:
                    raise LmcError(f"{runtime} validation failed: {name} shape {got.shape} vs PyTorch {expected.shape}")
                worst = max(worst, float(np.abs(got - expected).max()))
    record = {"max_abs_logit_diff": worst, "tolerance": tolerance,
              "batches": [list(b["input_ids"].shape) for b in batches]}
    if not np.isfinite(worst) or worst > tolerance:
        raise LmcError(f"{runtime} validation failed: max |logit difference| vs PyTorch is {worst:.3g} > tolerance "
                       f"{tolerance:g}; {advice}")
    return record


def to_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and activations, fp32 inputs/outputs kept so callers feed the same arrays."""
    import onnx  # onnx and ONNX Runtime's tools load in seconds: only when exporting or quantizing
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(target))
    return target


def _preprocess(source: Path, target: Path) -> Path:
    """ORT's recommended step before quantization: graph optimisation + shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process  # (see to_fp16)

    with _quiet():
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


def quantize_dynamic_int8(source: Path, target: Path) -> Path:
    """Int8 weights, activations quantised per batch at run time (per-tensor signed int8 was the
    fastest variant measured here: unsigned weights were 3x slower, per-channel no faster)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # (see to_fp16)

    pre = _preprocess(source, target.with_name(target.stem + ".pre.onnx"))
    try:
        with _quiet():
            quantize_dynamic(str(pre), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
                             extra_options={"DefaultTensorType": 1})
    finally:
        pre.unlink(missing_ok=True)
    return target


def quantize_static_int8(source: Path, target: Path, calibration: list[dict[str, torch.Tensor]]) -> Path:
    """Int8 weights and activations with ranges calibrated on `calibration` batches (QOperator, uint8 activations,
    int8 weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # (to_fp16)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{k: v.numpy().astype(np.int64) for k, v in b.items()} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    pre = _preprocess(source, target.with_name(target.stem + ".pre.onnx"))
    try:
        with _quiet():
            quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=QUANTIZED_OPS, extra_options={"DefaultTensorType": 1})
    finally:
        pre.unlink(missing_ok=True)
        for leftover in target.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
    return target
