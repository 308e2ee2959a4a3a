"""The OpenVINO backend: a compiled CPU model over a run's OpenVINO IR (model.xml + model.bin), behind the call
signature evaluation uses for PyTorch models (`OpenVinoClassifier(**batch).logits`).

The IR is converted from our validated ONNX export (stages/export.py, stages/quantize.py). The inference precision is a hint given
when the model is compiled, not a property of the file: OpenVINO would pick bf16 by itself on a CPU with AMX or
AVX512-BF16, so every compile names the precision the run recorded (f32 unless the user asked for bf16) and the
accuracy measured is the accuracy served.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LmcError
from ..machine import cpu_has_bf16
from ..models.load import first_line
from ..runs.manifest import read_manifest

IR_FILE = "model.xml"  # its weights: model.bin beside it
WEIGHTS_FILE = "model.bin"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def require_openvino(quantizing: bool = True) -> None:
    """openvino, and nncf when `quantizing` (serving an IR needs openvino alone; nncf is a heavy import)."""
    try:
        for name in ("openvino", "nncf") if quantizing else ("openvino",):
            importlib.import_module(name)
    except ImportError as exc:
        raise LmcError(f"OpenVINO support needs openvino and nncf ({exc.name} is missing): "
                       "pip install openvino nncf") from None


def _ov():
    require_openvino(quantizing=False)
    import openvino as ov  # loads in a second or two: only for OpenVINO runs

    return ov


def _core():
    return _ov().Core()


def recorded_precision(folder: Path) -> str:
    """The inference precision an OpenVINO run dir was made for (lmcompress.json "openvino"), fp32 by default."""
    return (read_manifest(folder).records.get("openvino") or {}).get("precision", "fp32")


def served_precision(folder: Path) -> str:
    """The precision an OpenVINO run dir runs at on this CPU: the recorded one, but fp32 where a bf16 hint would be
    ignored (no AMX or AVX512-BF16), so that reports name the arithmetic that was timed and scored."""
    recorded = recorded_precision(folder)  # the CPU's flags decide, as for every bf16 path (no openvino import)
    return "fp32" if recorded == "bf16" and not cpu_has_bf16() else recorded


def check_precision(precision: str) -> None:
    """One line when bf16 is asked for on a CPU that would silently run f32 instead."""
    if precision == "bf16" and not cpu_has_bf16():  # the flags OpenVINO's bf16 kernels need, as served_precision
        raise LmcError("this CPU has no bf16 kernels for OpenVINO (no AMX or AVX512-BF16): a bf16 hint would run "
                       "in fp32 here; use --precision fp32, or convert on the machine that will serve the model")


def onnx_to_ir(onnx_path: Path, xml_path: Path) -> Path:
    """An ONNX graph -> OpenVINO IR with fp32 weights (save_model compresses to fp16 unless told otherwise)."""
    ov = _ov()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # the converter raises its own types; the first line names the unsupported op
        raise LmcError(f"OpenVINO cannot convert {onnx_path.name}: {first_line(exc)}") from None
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def quantize_ir_int8(xml_path: Path, target: Path, calibration: list[dict[str, torch.Tensor]]) -> Path:
    """NNCF post-training int8 (weights and activations, ranges from `calibration` batches; the transformer
    preset keeps softmax and layer norm in floating point) -> the int8 IR at `target`."""
    require_openvino()
    import nncf  # heavy (its own torch/onnx probes): only when quantizing for OpenVINO

    core = _core()
    model = core.read_model(str(xml_path))
    names = {port.get_any_name() for port in model.inputs}
    items = [{k: v.numpy().astype(np.int64) for k, v in batch.items() if k in names} for batch in calibration]
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items))
    _ov().save_model(quantized, str(target), compress_to_fp16=False)
    return target


def ir_param_count(model) -> int:
    """Elements of the IR's weight constants (float and int8 tensors of more than one element); shape and index
    constants (integers of 64 or 32 bits) are not weights, nor are single-element constants: the converter turns
    scalars such as the attention scale into [1, 1, 1, 1] tensors (a regression head's one bias goes uncounted)."""
    weights = {"f32", "f16", "bf16", "i8", "u8"}
    total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in weights:
            size = int(np.prod(list(op.get_output_shape(0))))
            if size > 1:
                total += size
    return total


class OpenVinoClassifier(nn.Module):
    """A compiled OpenVINO CPU model behind the call signature evaluation uses for PyTorch models."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32"):
        super().__init__()
        core = _core()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                "PERFORMANCE_HINT": "LATENCY"})
        except Exception as exc:
            raise LmcError(f"OpenVINO cannot load {path}: {first_line(exc)}") from None
        self.path, self.precision = path, precision
        self.param_count = ir_param_count(model)
        self.input_names = tuple(port.get_any_name() for port in self.compiled.inputs)
        self.output_names = tuple(port.get_any_name() for port in self.compiled.outputs)
        self.request = self.compiled.create_infer_request()  # one request reused: forward is what latency times

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_: Any) -> SimpleNamespace:
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        results = self.request.infer({name: given[name].numpy().astype(np.int64) for name in self.input_names})
        outputs = {port.get_any_name(): value for port, value in results.items()}
        return SimpleNamespace(**{name: torch.from_numpy(np.array(outputs[name])) for name in self.output_names},
                               loss=None)
