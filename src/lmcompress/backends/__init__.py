"""Runtimes a run directory can be served on, behind one call signature (`model(**batch).logits`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import LmcError
from ..models import static
from ..models.load import check_head, load_trained_classifier
from ..runs.manifest import read_manifest
from .onnx import MODEL_FILE, OnnxClassifier
from .openvino import IR_FILE, OpenVinoClassifier, recorded_precision, served_precision

log = logging.getLogger("lmcompress")


def load_run_model(folder: Path, labels: list[str] | None, regression: bool, threads: int | None = None,
                   task: str | None = None) -> torch.nn.Module:
    """Whatever a run dir holds, ready to score: an ONNX graph (model.onnx), an OpenVINO IR (model.xml, compiled with
    the precision its run recorded, or fp32 where this CPU has no bf16), a static-embedding classifier, or a
    PyTorch checkpoint."""
    if (folder / MODEL_FILE).is_file():
        check_head(folder, labels, regression, task)
        return OnnxClassifier(folder / MODEL_FILE, threads)
    if (folder / IR_FILE).is_file():
        check_head(folder, labels, regression, task)
        precision = served_precision(folder)
        if precision != recorded_precision(folder):
            log.warning("%s was made for OpenVINO bf16, but this CPU has no bf16 kernels (no AMX or AVX512-BF16): "
                        "it runs, and is scored and timed, in fp32", folder)
        return OpenVinoClassifier(folder / IR_FILE, threads, precision)
    if static.is_static_dir(folder):
        if task not in (None, "classification", "regression"):
            raise LmcError(f"{folder} is a static-embedding classifier; it cannot score a {task} task")
        return static.load_static(folder, labels, regression)
    if read_manifest(folder).quantization_method == "dynamic-int8":
        raise LmcError(f"{folder} was made with quantize --method dynamic-int8, which lmcompress no longer serves "
                       "(torch.ao's dynamic int8 is deprecated); quantize its parent again with --method onnx-int8 "
                       "or openvino-int8")
    return load_trained_classifier(folder, labels, regression, task)
