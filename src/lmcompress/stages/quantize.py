"""`lmcompress quantize` (int8), and the ONNX / OpenVINO run writing that `export` shares: each output is a run dir
that `evaluate` and `compare` score like any other, with the accuracy and latency measured at the end of the stage.

Run dir contents:
- onnx-int8 / static-int8 / export: model.onnx + config.json (labels) + tokenizer, loadable with onnxruntime alone.
- openvino-int8 / export --format openvino: model.xml + model.bin (OpenVINO IR, converted from the validated ONNX
  export; int8 by NNCF post-training quantization) + config.json + tokenizer, loadable with openvino alone. The
  inference precision (fp32, or bf16 on CPUs that have it) is recorded under "openvino" in lmcompress.json.
"""

from __future__ import annotations

import json
import logging
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..backends import openvino as ov_backend
from ..backends.onnx import DISABLED_OPTIMIZERS, MODEL_FILE, OnnxClassifier, require_onnx
from ..config import QuantizeConfig, to_dict
from ..data import load_task
from ..errors import LmcError
from ..models.load import load_tokenizer, load_trained_classifier
from ..runkinds.task import score_test
from ..runs.files import write_json_atomic
from ..runs.manifest import METRICS, Manifest, data_config_for, read_manifest, stage_manifest
from ..runs.rundir import RunDir
from ..backends import onnx_io
from .lm_onnx import lm_objective, onnx_lm

log = logging.getLogger("lmcompress")


def _source_run(spec: str) -> Path:
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise LmcError(f"--model {spec} is not a run directory or Hugging Face checkpoint (no config.json)")
    if (folder / MODEL_FILE).is_file() or (folder / ov_backend.IR_FILE).is_file():
        kind = "an ONNX" if (folder / MODEL_FILE).is_file() else "an OpenVINO"
        raise LmcError(f"--model {spec} is already {kind} run; quantize or export its PyTorch parent instead")
    if read_manifest(folder).quantization_method:
        raise LmcError(f"--model {spec} is already quantized; start from its fp32 parent")
    return folder


def _batches(task_data, split: str, tokenizer, max_length: int, sizes: tuple[int, ...]) -> list[dict[str, torch.Tensor]]:
    """Real rows of `split`, padded to each batch's longest row (so masks contain padding), one batch per size
    (rows reused in turn when the split is smaller than the batches)."""
    frame = task_data.splits[split]
    if len(frame) == 0:
        raise LmcError(f"the {split} split is empty: nothing to check the exported model on; give more rows")
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if task_data.has_pair else None
    out, start = [], 0
    for size in sizes:
        rows = [(start + i) % len(texts) for i in range(size)]
        out.append(dict(tokenizer([texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None,
                                  truncation=True, max_length=max_length, padding=True, return_tensors="pt")))
        start += size
    return out


def prepare_source(model_spec: str, data) -> tuple[Path, Any, Any, Any, Any]:
    source = _source_run(model_spec)
    data_cfg = data_config_for(data, source)
    task_data = load_task(data_cfg)
    model = load_trained_classifier(source, task_data.labels, task_data.task == "regression",
                                    task_data.task).eval()
    tokenizer = load_tokenizer(source)
    return source, data_cfg, task_data, model, tokenizer


def export_validated(model, tokenizer, task_data, max_length: int, folder: Path,
                      tolerance: float) -> tuple[Path, dict, list[dict[str, torch.Tensor]]]:
    """fp32 ONNX graph in `folder`, checked against PyTorch on a padded batch of 16 and a single row
    -> (graph, validation record, the check batches)."""
    sample = _batches(task_data, "train", tokenizer, max_length, (4,))[0]
    path = onnx_io.export_onnx(model, sample, folder / "fp32.onnx")
    checks = _batches(task_data, "validation", tokenizer, max_length, (16, 1))
    record = onnx_io.validate(model, path, checks, tolerance)
    log.info("ONNX export validated: max |logit diff| %.2e <= %.0e on %s", record["max_abs_logit_diff"], tolerance,
             record["batches"])
    return path, record, checks


def write_onnx_run(run: RunDir, source: Path, tokenizer, graph: Path) -> None:
    """model.onnx + the labels' config.json + tokenizer: what onnxruntime users deploy."""
    graph.rename(run.partial / MODEL_FILE)
    shutil.copy2(source / "config.json", run.partial / "config.json")
    tokenizer.save_pretrained(run.partial)


def write_openvino_run(run: RunDir, source: Path, tokenizer, xml: Path) -> None:
    """model.xml + model.bin + the labels' config.json + tokenizer: what OpenVINO users deploy."""
    xml.with_suffix(".bin").rename(run.partial / ov_backend.WEIGHTS_FILE)
    xml.rename(run.partial / ov_backend.IR_FILE)
    shutil.copy2(source / "config.json", run.partial / "config.json")
    tokenizer.save_pretrained(run.partial)


def _calibration(task_data, tokenizer, max_length: int, rows: int) -> list[dict[str, torch.Tensor]]:
    """Batches of up to 8 training rows, `rows` of them in all (the whole split when it is smaller), none repeated."""
    whole, rest = divmod(min(rows, len(task_data.splits["train"])), 8)
    return _batches(task_data, "train", tokenizer, max_length, (8,) * whole + ((rest,) if rest else ()))


def validated_ir(model, fp32_onnx: Path, checks: list[dict[str, torch.Tensor]], tolerance: float) -> tuple[Path, dict]:
    """The validated ONNX graph converted to an fp32 IR, checked again against PyTorch (compiled in f32)."""
    xml = ov_backend.onnx_to_ir(fp32_onnx, fp32_onnx.with_suffix(".xml"))
    record = onnx_io.validate_with(model, ov_backend.OpenVinoClassifier(xml), checks, tolerance, "OpenVINO")
    log.info("OpenVINO conversion validated: max |logit diff| %.2e <= %.0e", record["max_abs_logit_diff"], tolerance)
    return xml, record


def openvino_record(precision: str) -> dict[str, Any]:
    return {"precision": precision, "library": f"openvino {metadata.version('openvino')}"}


def onnx_manifest(stage: str, source: Path, cfg, data_cfg, task_data, **extra: Any) -> Manifest:
    return stage_manifest(stage, str(source), to_dict(cfg) | {"data": to_dict(data_cfg)}, task_data, **extra)


def finish_onnx_run(run: RunDir, model, tokenizer, task_data, max_length: int, manifest: Manifest,
                    parent_metrics: dict[str, Any] | None) -> dict[str, Any]:
    metrics = score_test(model, tokenizer, task_data, run.partial, max_length, 64)
    if parent_metrics:
        main = metrics["main_metric"]
        metrics["delta_vs_parent"] = round(metrics["metrics"][main] - parent_metrics["metrics"][main], 6)
        manifest.records["delta_vs_parent"] = {main: metrics["delta_vs_parent"]}
    write_json_atomic(run.partial / METRICS, metrics)
    final = run.commit(manifest)
    metrics["path"] = str(final)
    return metrics


def parent_metrics(source: Path) -> dict[str, Any] | None:
    path = source / METRICS
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def quantize(cfg: QuantizeConfig) -> dict[str, Any]:
    if lm_objective(cfg.model):
        return onnx_lm(cfg, "quantize")
    run = RunDir(cfg.out)
    run.check(cfg.overwrite, None)
    require_onnx()
    if cfg.method == "openvino-int8":
        ov_backend.require_openvino()
    source, data_cfg, task_data, model, tokenizer = prepare_source(cfg.model, cfg.data)
    max_length = data_cfg.max_length
    run.begin(cfg.overwrite, False)
    with run.guard():
        tolerance = cfg.tolerance or onnx_io.DEFAULT_TOLERANCE["fp32"]
        fp32, validation, checks = export_validated(model, tokenizer, task_data, max_length, run.partial, tolerance)
        quantization: dict[str, Any] = {"method": cfg.method, "export_validation": validation}
        calibration = (_calibration(task_data, tokenizer, max_length, cfg.calibration_examples)
                       if cfg.method in ("static-int8", "openvino-int8") else [])
        if calibration:
            quantization["calibration_examples"] = sum(len(b["input_ids"]) for b in calibration)
        if cfg.method == "openvino-int8":
            scored = _openvino_int8(run, source, model, tokenizer, fp32, checks, tolerance, calibration)
            quantization["library"] = f"nncf {metadata.version('nncf')}"
            extra = {"openvino": openvino_record("fp32")}
        else:
            scored = _onnx_int8(cfg.method, run, source, tokenizer, fp32, calibration)
            quantization |= {"library": f"onnxruntime {metadata.version('onnxruntime')}",
                             "disabled_optimizers": list(DISABLED_OPTIMIZERS)}
            extra = {}
        manifest = onnx_manifest("quantize", source, cfg, data_cfg, task_data, quantization=quantization, **extra)
        metrics = finish_onnx_run(run, scored, tokenizer, task_data, max_length, manifest, parent_metrics(source))
    log.info("%s: %s %.4f (%+.4f vs %s)", cfg.method, metrics["main_metric"], metrics["metrics"][metrics["main_metric"]],
             metrics.get("delta_vs_parent", 0.0), source)
    return metrics


def _onnx_int8(method: str, run: RunDir, source: Path, tokenizer, fp32: Path,
               calibration: list[dict[str, torch.Tensor]]) -> OnnxClassifier:
    """fp32 ONNX -> ORT int8 (static with `calibration`, else dynamic), written into the run."""
    target = run.partial / "int8.onnx"
    if method == "static-int8":
        onnx_io.quantize_static_int8(fp32, target, calibration)
    else:
        onnx_io.quantize_dynamic_int8(fp32, target)
    fp32.unlink()
    write_onnx_run(run, source, tokenizer, target)
    return OnnxClassifier(run.partial / MODEL_FILE)


def _openvino_int8(run: RunDir, source: Path, model, tokenizer, fp32: Path, checks: list[dict[str, torch.Tensor]],
                   tolerance: float, calibration: list[dict[str, torch.Tensor]]):
    """fp32 ONNX -> validated fp32 IR -> NNCF int8 IR calibrated on `calibration`, written into the run."""
    xml, _ = validated_ir(model, fp32, checks, tolerance)
    target = ov_backend.quantize_ir_int8(xml, run.partial / "int8.xml", calibration)
    for leftover in (fp32, xml, xml.with_suffix(".bin")):
        leftover.unlink()
    write_openvino_run(run, source, tokenizer, target)
    return ov_backend.OpenVinoClassifier(run.partial / ov_backend.IR_FILE)
