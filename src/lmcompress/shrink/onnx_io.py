"""ONNX export with validation, ONNX Runtime int8 quantization, and an ONNX classifier that evaluates like a model.

Export uses torch's `torch.export`-based exporter (dynamic batch and sequence axes). The older TorchScript exporter
was measured to give wrong logits for transformers 5 BERT models with padding (max |diff| 2.3), so it is not used;
every export is validated against PyTorch on real, padded batches before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LmcError

log = logging.getLogger("lmcompress")

MODEL_FILE = "model.onnx"
# ORT's SkipLayerNormalization fusion made every LayerNorm ~10x slower on this CPU (int8 minilm-l6, batch 32:
# 71 ms with it, 52 ms without; benchmarks/shrink.py), so our sessions switch it off and run manifests record it.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
QUANTIZED_OPS = ["MatMul", "Gather"]  # Linear layers, and the embedding tables (the bulk of the file size)
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


def require_onnx() -> None:
    import importlib

    try:
        for name in ("onnx", "onnxruntime", "onnxscript"):
            importlib.import_module(name)
    except ImportError as exc:
        raise LmcError(f"ONNX support needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                       "pip install onnx onnxscript onnxruntime") from None


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
    from ..models.load import saved_head

    return ["start_logits", "end_logits"] if saved_head(config) == "question-answering" else ["logits"]


def export_onnx(model: nn.Module, sample: dict[str, torch.Tensor], path: Path) -> Path:
    """Trace `model` on `sample` (input_ids, attention_mask[, token_type_ids]: [B, T]) to `path` with dynamic B, T."""
    require_onnx()
    model = model.eval().cpu()
    # sdpa exports a NaN guard (IsNaN + Where) that cost ORT 16 ms of 82 at batch 32; the eager graph has none
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, "eager"):
        model.set_attn_implementation("eager")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: seq} for name in sample}
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(model, (), kwargs=dict(sample), dynamo=True, dynamic_shapes=shapes,
                                        input_names=list(sample), output_names=output_names(model.config),
                                        verbose=False)
            program.save(str(path))
    except Exception as exc:  # the exporter raises many types; the first line names the unsupported op
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise LmcError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    finally:
        if previous not in (None, "eager"):
            model.set_attn_implementation(previous)
    return path


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations except those in DISABLED_OPTIMIZERS."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise LmcError(f"ONNX Runtime cannot load {path}: {first}") from None


def input_names(sess) -> tuple[str, ...]:
    return tuple(i.name for i in sess.get_inputs())


def run_session(sess, batch: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Feed the graph's inputs `names` (int64) -> every output by name (logits, or start_logits and end_logits)."""
    outputs = [o.name for o in sess.get_outputs()]
    return dict(zip(outputs, sess.run(outputs, {name: batch[name].numpy().astype(np.int64) for name in names})))


def validate(model: nn.Module, path: Path, batches: list[dict[str, torch.Tensor]], tolerance: float) -> dict[str, Any]:
    """Max |logit difference| between ONNX Runtime and PyTorch on real batches; LmcError above `tolerance`."""
    sess = session(path)
    names = input_names(sess)
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            out = model(**batch)
            for name, got in run_session(sess, batch, names).items():
                expected = getattr(out, name).float().numpy()  # [B, C], [B, T, C] or [B, T]
                if got.shape != expected.shape:
                    raise LmcError(f"ONNX validation failed: {name} shape {got.shape} vs PyTorch {expected.shape}")
                worst = max(worst, float(np.abs(got - expected).max()))
    record = {"max_abs_logit_diff": worst, "tolerance": tolerance,
              "batches": [list(b["input_ids"].shape) for b in batches]}
    if not np.isfinite(worst) or worst > tolerance:
        raise LmcError(f"ONNX validation failed: max |logit difference| vs PyTorch is {worst:.3g} > tolerance "
                       f"{tolerance:g}; nothing was written (raise --tolerance only if you accept the difference)")
    return record


def to_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and activations, fp32 inputs/outputs kept so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(target))
    return target


def _preprocess(source: Path, target: Path) -> Path:
    """ORT's recommended step before quantization: graph optimisation + shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


def quantize_dynamic_int8(source: Path, target: Path) -> Path:
    """Int8 weights, activations quantised per batch at run time (per-tensor signed int8 was the
    fastest variant measured here: unsigned weights were 3x slower, per-channel no faster)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

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
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

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


def onnx_param_count(path: Path) -> int:
    """Elements of the graph's weights: float and int8 initialisers and float Constant tensors (the exporter keeps
    some small ones as Constant nodes). Shape and index constants (int64) are not weights. Identical tensors (e.g.
    untrained all-zero biases) are stored once by the exporter and so counted once."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8,
               onnx.TensorProto.UINT8}
    total = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type in weights and len(i.dims) >= 1)
    floats = weights - {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in floats and len(attr.t.dims) >= 1:
                    total += int(np.prod(attr.t.dims))
    return total


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind the call signature evaluation uses for PyTorch models."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        self.path = path
        self.session = session(path, threads)
        self.param_count = onnx_param_count(path)
        self.input_names = input_names(self.session)  # once: forward is what latency measurements time

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_: Any) -> SimpleNamespace:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            batch["token_type_ids"] = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        outputs = run_session(self.session, batch, self.input_names)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in outputs.items()}, loss=None)
