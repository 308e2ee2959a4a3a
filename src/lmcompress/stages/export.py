"""`lmcompress export`: a validated ONNX (fp32 / fp16) or OpenVINO IR run of a fine-tuned model, built with the
ONNX helpers of `quantize`; a causal LM goes to ONNX (`lm_onnx`) or GGUF (`gguf_export`)."""

from __future__ import annotations

from typing import Any

from ..backends import onnx_io
from ..backends import openvino as ov_backend
from ..backends.onnx import DISABLED_OPTIMIZERS, MODEL_FILE, OnnxClassifier, require_onnx
from ..config import ExportConfig
from ..runs.rundir import RunDir
from .gguf_export import export_gguf
from .lm_onnx import lm_objective, onnx_lm
from .quantize import (export_validated, finish_onnx_run, onnx_manifest, openvino_record, parent_metrics, prepare_source,
                       validated_ir, write_onnx_run, write_openvino_run)


def export(cfg: ExportConfig) -> dict[str, Any]:
    if cfg.format == "gguf":
        return export_gguf(cfg)
    if lm_objective(cfg.model):
        return onnx_lm(cfg, "export")
    run = RunDir(cfg.out)
    run.check(cfg.overwrite, None)
    require_onnx()
    if cfg.format == "openvino":
        ov_backend.require_openvino(quantizing=False)
        ov_backend.check_precision(cfg.precision)
    source, data_cfg, task_data, model, tokenizer = prepare_source(cfg.model, cfg.data)
    max_length = data_cfg.max_length
    tolerance = cfg.tolerance or onnx_io.DEFAULT_TOLERANCE["fp16" if cfg.precision == "fp16" else "fp32"]
    run.begin(cfg.overwrite, False)
    with run.guard():
        graph, validation, checks = export_validated(
            model, tokenizer, task_data, max_length, run.partial,
            onnx_io.DEFAULT_TOLERANCE["fp32"] if cfg.precision == "fp16" else tolerance)
        if cfg.precision == "fp16":
            half = onnx_io.to_fp16(graph, run.partial / "fp16.onnx")
            graph.unlink()
            validation = onnx_io.validate(model, half, checks, tolerance)
            graph = half
        if cfg.format == "openvino":
            xml, validation = validated_ir(model, graph, checks, tolerance)
            graph.unlink()
            write_openvino_run(run, source, tokenizer, xml)
            manifest = onnx_manifest("export", source, cfg, data_cfg, task_data, openvino=openvino_record(cfg.precision),
                                 export={"format": "openvino", "precision": cfg.precision, "validation": validation})
            scored = ov_backend.OpenVinoClassifier(run.partial / ov_backend.IR_FILE, precision=cfg.precision)
            return finish_onnx_run(run, scored, tokenizer, task_data, max_length, manifest, parent_metrics(source))
        write_onnx_run(run, source, tokenizer, graph)
        manifest = onnx_manifest("export", source, cfg, data_cfg, task_data,
                             export={"format": "onnx", "precision": cfg.precision, "validation": validation,
                                     "disabled_optimizers": list(DISABLED_OPTIMIZERS)})
        scored = OnnxClassifier(run.partial / MODEL_FILE)
        return finish_onnx_run(run, scored, tokenizer, task_data, max_length, manifest, parent_metrics(source))
