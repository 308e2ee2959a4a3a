"""One model on every runtime this machine has, for `compare --backends auto`. Which runtime and precision serves a
model fastest depends on the processor (OpenVINO fp32 beat ONNX Runtime int8 on an AVX2-only EPYC; PyTorch bf16
led on a Xeon with AMX), so it is measured where the model will be served, never assumed.

A PyTorch run is exported once (ONNX, validated against PyTorch on a real batch) and served by PyTorch, ONNX Runtime
and OpenVINO, in bf16 too where the CPU has bf16 kernels (AMX or AVX512-BF16). A run that already is a deployment
format (ONNX, OpenVINO IR, dynamic int8, a static-embedding table) is served as it is.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import LmcError
from ..machine import cpu_has_bf16
from ..models import static
from ..runs.manifest import read_manifest
from . import onnx_io
from .onnx import MODEL_FILE
from .openvino import IR_FILE, OpenVinoClassifier, onnx_to_ir, served_precision

log = logging.getLogger("lmcompress")

def run_backend(folder: Path) -> str:
    """The runtime a run dir is served by as it is on this CPU: onnxruntime, openvino[-bf16] or torch."""
    if (folder / MODEL_FILE).is_file():
        return "onnxruntime"
    if (folder / IR_FILE).is_file():
        return "openvino-bf16" if served_precision(folder) == "bf16" else "openvino"
    return "torch"


def arithmetic(folder: Path, backend: str) -> str:
    """The arithmetic a (run, backend) pair computes in: int8 for any quantized run, bf16 for a bf16 backend, fp16
    for an fp16 ONNX export, else fp32."""
    if read_manifest(folder).quantization_method:
        return "int8"
    if backend.endswith("-bf16"):
        return "bf16"
    export = read_manifest(folder).export or {}
    return "fp16" if export.get("format") == "onnx" and export.get("precision") == "fp16" else "fp32"


class Bf16Autocast(nn.Module):
    """A PyTorch model run under CPU bf16 autocast (matmuls in bf16, reductions in fp32); outputs back in fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch) -> SimpleNamespace:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(**batch)
        return SimpleNamespace(**{k: v.float() for k, v in out.items() if torch.is_tensor(v)}, loss=None)


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def serving_variants(folder: Path, model: nn.Module, sample: dict[str, torch.Tensor], workdir: Path,
                     threads: int) -> dict[str, nn.Module]:
    """{backend name: the model served by it}: every runtime available here for a plain PyTorch run, else the
    run's own runtime. `sample` is a real padded batch: the export is traced on it and checked against it."""
    own = run_backend(folder)
    if own != "torch" or read_manifest(folder).quantization_method or static.is_static_dir(folder):
        return {own: model}
    bf16 = cpu_has_bf16()
    variants: dict[str, nn.Module] = {"torch": model}
    if bf16:
        variants["torch-bf16"] = Bf16Autocast(model)
    if not installed("onnx", "onnxscript", "onnxruntime"):
        log.warning("%s: ONNX Runtime and OpenVINO not timed (onnx, onnxscript or onnxruntime is not installed)",
                    folder)
        return variants
    # a model an exporter cannot take is still compared on what can serve it
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        graph = onnx_io.export_onnx(model, sample, workdir / "fp32.onnx")
        onnx_io.validate(model, graph, [sample], onnx_io.DEFAULT_TOLERANCE["fp32"], advice="its exports are not served")
    except LmcError as exc:
        log.warning("%s: ONNX Runtime and OpenVINO not timed: %s", folder, exc)
        return variants
    variants["onnxruntime"] = onnx_io.OnnxClassifier(graph, threads)
    if not installed("openvino"):
        log.warning("%s: OpenVINO not timed (openvino is not installed: pip install openvino)", folder)
        return variants
    try:
        xml = onnx_to_ir(graph, workdir / "fp32.xml")
        variants["openvino"] = OpenVinoClassifier(xml, threads, "fp32")
        if bf16:
            variants["openvino-bf16"] = OpenVinoClassifier(xml, threads, "bf16")
    except LmcError as exc:
        log.warning("%s: OpenVINO not timed: %s", folder, exc)
    return variants
