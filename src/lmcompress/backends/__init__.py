"""Runtimes a run directory can be served on, behind one call signature (`model(**batch).logits`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LmcError
from ..models import static
from ..models.load import check_head, load_trained_classifier
from ..runs import quantization_method, read_run_manifest
from .onnx import MODEL_FILE, OnnxClassifier
from .openvino import IR_FILE, OpenVinoClassifier
from .torch_int8 import dynamic_int8


def load_run_model(folder: Path, labels: list[str] | None, regression: bool, threads: int | None = None,
                   task: str | None = None) -> torch.nn.Module:
    """Whatever a run dir holds, ready to score: an ONNX graph (model.onnx), an OpenVINO IR (model.xml, compiled with
    the precision its run recorded), a static-embedding classifier, a PyTorch checkpoint, or a PyTorch checkpoint
    whose manifest asks for dynamic int8 (applied here, at load time, as in deployment)."""
    if (folder / MODEL_FILE).is_file():
        check_head(folder, labels, regression, task)
        return OnnxClassifier(folder / MODEL_FILE, threads)
    if (folder / IR_FILE).is_file():
        check_head(folder, labels, regression, task)
        precision = ((read_run_manifest(folder) or {}).get("openvino") or {}).get("precision", "fp32")
        return OpenVinoClassifier(folder / IR_FILE, threads, precision)
    if static.is_static_dir(folder):
        if task not in (None, "classification", "regression"):
            raise LmcError(f"{folder} is a static-embedding classifier; it cannot score a {task} task")
        return static.load_static(folder, labels, regression)
    model = load_trained_classifier(folder, labels, regression, task)
    if quantization_method(folder) == "dynamic-int8":
        model = dynamic_int8(model)
    return model
