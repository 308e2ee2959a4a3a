"""`lmcompress compare`: score and time every run on the same test rows in one process, then write
report.json (schema: docs/run-directories.md), report.md, a self-contained report.html and pareto.png (metric vs latency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import catalog
from ..backends.gguf_file import GGUF_FILE
from ..config import CompareConfig
from ..errors import LmcError
from ..machine import cpu_has_bf16, processor, usable_cores
from ..measure import LATENCY_BATCHES
from ..models.onnx_bert import zoo_model_dir
from ..report import pareto_front, plot_pareto, print_table, render_html, render_markdown
from ..roofline import matmul_peaks
from ..runkinds import TASK, kind_for_comparison
from ..runs.files import replace_folder, write_json_atomic
from ..runs.manifest import read_manifest, versions
from ..timing import per_round_ratios, quartiles


def _run_names(folders: list[Path]) -> list[str]:
    names = [f.name for f in folders]
    if len(set(names)) < len(names):  # same leaf name in different places: use parent/name
        names = [f"{f.parent.name}/{f.name}" for f in folders]
    return names


def compare(cfg: CompareConfig) -> dict[str, Any]:
    folders = [_run_folder(r) for r in cfg.runs]
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise LmcError(f"--out {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise LmcError(f"--out {out} is not empty; pass --overwrite to replace the report")
    names = cfg.row_names() or [spec if not Path(spec).expanduser().exists() else name  # a zoo model: its zoo name
                                for spec, name in zip(cfg.runs, _run_names(folders))]
    teacher_index = 0
    if cfg.teacher is not None:
        matches = [i for i, (n, f) in enumerate(zip(names, folders)) if cfg.teacher in (n, str(f), f.name)]
        if not matches:
            raise LmcError(f"--teacher {cfg.teacher} is not one of the runs ({', '.join(names)})")
        teacher_index = matches[0]
    threads = cfg.threads or torch.get_num_threads()
    manifests = [read_manifest(folder) for folder in folders]
    kind = kind_for_comparison(manifests, teacher_index)
    if cfg.backends != "run" and kind is not TASK:
        raise LmcError("--backends auto times task models on each runtime; embedding and language-model runs are "
                       "timed on their own (drop --backends)")
    if cfg.baseline != "none" and kind is not TASK:
        raise LmcError(f"--baseline {cfg.baseline} is a text classifier; it has no counterpart for embedding or "
                       "language-model runs (drop --baseline)")
    rows, context = kind.compare_rows(cfg, folders, names, manifests, teacher_index, threads)
    lower_is_better = kind.lower_is_better
    _record_runs(rows, dict(zip(names, folders)))

    ref = rows[teacher_index]
    for row in rows:
        # retention: the share of the teacher's quality kept, inverted for perplexity (lower is better)
        ratio = (ref["value"] / row["value"] if lower_is_better else row["value"] / ref["value"]) \
            if ref["value"] and row["value"] else None
        row["retention"] = round(ratio, 4) if ratio is not None else None
        row["throughput_b32"] = round(32_000.0 / row["latency_ms_b32"], 1)
    _speedups(rows, ref)
    peaks = matmul_peaks(threads, cpu_has_bf16()) if kind is TASK else {}
    _roofline(rows, peaks)
    sign = -1.0 if lower_is_better else 1.0
    candidates = [r for r in rows if not r.get("reference")]  # a baseline row is shown, never a Pareto point
    for row, on_front in zip(candidates, pareto_front([(r["latency_ms_b32"], sign * r["value"]) for r in candidates])):
        row["pareto"] = on_front
    for row in rows:
        row.setdefault("pareto", False)
    report = {
        "teacher": ref["name"],
        "rows": rows,
        "task": context["task"],
        "data": context["data"],
        "setup": {"threads": threads, "seq_len": context["seq_len"], "latency_repeats": cfg.latency_repeats,
                  "statistic": "median, warm-up excluded", "device": "cpu", "processor": processor(),
                  "interleaved": "latency_rounds_ms_b32" in ref,  # task rows are timed side by side
                  "cores": usable_cores(), "matmul_peak_gflops": peaks},
        "versions": versions(),
    }

    with replace_folder(out) as folder:
        write_json_atomic(folder / "report.json", report)
        plot_pareto(rows, rows[0]["metric"], folder / "pareto.png", lower_is_better)
        (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (folder / "report.html").write_text(render_html(report, folder / "pareto.png"), encoding="utf-8")
    print_table(report)
    report["path"] = str(out)
    return report


def _record_runs(rows: list[dict[str, Any]], runs: dict[str, Path]) -> None:
    """Each row's run folder (the TF-IDF reference row has none): report.md tells how to use it."""
    for row in rows:
        if row["name"] in runs:
            row["run"] = str(runs[row["name"]])


def _run_folder(spec: str) -> Path:
    """A run directory, or a zoo model name (minilm-l6, the teacher of an embedding run; smollm2-135m, a .gguf
    file, of a language-model one)."""
    folder = Path(spec).expanduser()
    if not folder.exists() and catalog.is_zoo_name(spec) and catalog.get(spec).kind == "model":
        folder = zoo_model_dir(catalog.get(spec))
    if folder.suffix == ".gguf" and folder.is_file():  # a causal LM as llama.cpp ships it (a teacher row)
        return folder
    if not any((folder / name).is_file() for name in ("config.json", GGUF_FILE)):
        raise LmcError(f"{spec} is not a run directory (no config.json)")
    return folder


def _roofline(rows: list[dict[str, Any]], peaks: dict[str, float | None]) -> None:
    """Achieved GFLOP/s at batch 32 (the config's FLOPs over the measured latency) and its share of this machine's
    matmul peak for the row's precision."""
    for row in rows:
        if row.get("gflop_b32") and row.get("latency_ms_b32"):
            row["gflops_b32"] = round(row["gflop_b32"] / (row["latency_ms_b32"] / 1000.0), 1)
            peak = peaks.get(row.get("precision", "fp32"))
            row["peak_share_b32"] = round(row["gflops_b32"] / peak, 4) if peak else None


def _speedups(rows: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """speedup = reference latency / row latency: within each round when the rows were timed side by side (the
    median of those ratios, with their interquartile range), else from the medians. The reference is the teacher
    on PyTorch fp32 when it was timed on several backends (so the teacher's own row shows what its best backend
    gains), else the teacher's row."""
    reference = (ref.get("backends") or {}).get("torch", ref)
    for row in rows + [e for r in rows for e in (r.get("backends") or {}).values()]:
        for size in LATENCY_BATCHES:
            mine, theirs = row.get(f"latency_rounds_ms_b{size}"), reference.get(f"latency_rounds_ms_b{size}")
            if mine is not None and theirs is not None:
                q1, median, q3 = quartiles(per_round_ratios(theirs, mine))
                row[f"speedup_b{size}"], row[f"speedup_iqr_b{size}"] = round(median, 3), [round(q1, 3), round(q3, 3)]
            else:
                row[f"speedup_b{size}"] = round(reference[f"latency_ms_b{size}"] / row[f"latency_ms_b{size}"], 3)
