"""`lmcompress compare`: score and time every run on the same test rows in one process, then write
report.json (schema: docs/run-directories.md), report.md, a self-contained report.html and pareto.png (metric vs latency).
"""

from __future__ import annotations

import base64
import functools
import html
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .baselines import check_tfidf, tfidf_row
from .config import CompareConfig
from .data import load_task
from .console import console
from .data.tokenize import fixed_batch
from .errors import LmcError
from .evaluate import LATENCY_BATCHES, MAIN_METRIC, count_params, score_split, weights_size_bytes
from .machine import processor
from .models.load import load_run_model, load_tokenizer
from .timing import interleaved_rounds, per_round_ratios, quartiles
from .runs import data_config_for, is_embedding_run, is_language_model, read_run_manifest, versions, write_json_atomic

log = logging.getLogger("lmcompress")


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, value) points where lower latency and higher value are better: which are not dominated."""
    flags = []
    for i, (lat_i, val_i) in enumerate(points):
        dominated = any(lat_j <= lat_i and val_j >= val_i and (lat_j < lat_i or val_j > val_i)
                        for j, (lat_j, val_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def made_by(manifest: dict[str, Any]) -> str:
    """How a run was made, in a few words: `finetune`, `distill layers=2`, `prune heads 12 -> 6`, `quantize onnx-int8`."""
    stage = manifest.get("stage")
    if not stage:
        return "checkpoint"
    if stage in ("distill", "distill-lm", "distill-embeddings"):
        spec = str((manifest.get("student") or {}).get("spec", ""))
        return f"distill from {Path(spec).name}" if "/" in spec else f"distill {spec}".strip()
    if stage == "quantize":
        return f"quantize {(manifest.get('quantization') or {}).get('method', '')}".strip()
    if stage == "export":
        return f"export onnx {(manifest.get('export') or {}).get('precision', '')}".strip()
    if stage == "prune":
        pruning = manifest.get("pruning") or {}
        changed = [f"{key.split('_')[0]} {value}" for key in ("heads_per_layer", "ffn_per_layer", "hidden")
                   if isinstance(value := pruning.get(key), str) and len(set(value.split(" -> "))) == 2]
        return "prune " + ", ".join(changed) if changed else "prune"
    return stage


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
    names = [spec if not Path(spec).expanduser().exists() else name  # a zoo model keeps its zoo name
             for spec, name in zip(cfg.runs, _run_names(folders))]
    teacher_index = 0
    if cfg.teacher is not None:
        matches = [i for i, (n, f) in enumerate(zip(names, folders)) if cfg.teacher in (n, str(f), f.name)]
        if not matches:
            raise LmcError(f"--teacher {cfg.teacher} is not one of the runs ({', '.join(names)})")
        teacher_index = matches[0]
    threads = cfg.threads or torch.get_num_threads()
    manifests = [read_run_manifest(folder) or {} for folder in folders]
    if cfg.baseline != "none" and (any(is_embedding_run(m) for m in manifests) or is_language_model(manifests[teacher_index])):
        raise LmcError(f"--baseline {cfg.baseline} is a text classifier; it has no counterpart for embedding or "
                       "language-model runs (drop --baseline)")
    if any(is_embedding_run(m) for m in manifests):
        rows, context = _embedding_rows(cfg, folders, names, manifests, threads)
    elif is_language_model(manifests[teacher_index]):
        rows, context = _language_model_rows(cfg, folders, names, teacher_index, threads)
    else:
        rows, context = _task_rows(cfg, folders, names, teacher_index, threads)
    lower_is_better = context["lower_is_better"]

    ref = rows[teacher_index]
    for row in rows:
        # retention: the share of the teacher's quality kept, inverted for perplexity (lower is better)
        ratio = (ref["value"] / row["value"] if lower_is_better else row["value"] / ref["value"]) \
            if ref["value"] and row["value"] else None
        row["retention"] = round(ratio, 4) if ratio is not None else None
        row["throughput_b32"] = round(32_000.0 / row["latency_ms_b32"], 1)
    _speedups(rows, ref)
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
                  "cores": os.cpu_count()},
        "versions": versions(),
    }

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_json_atomic(tmp / "report.json", report)
        plot_pareto(rows, rows[0]["metric"], tmp / "pareto.png", lower_is_better)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report, tmp / "pareto.png"), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_table(report)
    report["path"] = str(out)
    return report


def _run_folder(spec: str) -> Path:
    """A run directory, or a zoo model name (e.g. minilm-l6, the teacher of an embedding run)."""
    from . import catalog

    folder = Path(spec).expanduser()
    if not folder.exists() and catalog.is_zoo_name(spec) and catalog.get(spec).kind == "model":
        folder = catalog.get(spec).require()
    if not (folder / "config.json").is_file():
        raise LmcError(f"{spec} is not a run directory (no config.json)")
    return folder


def _embedding_rows(cfg: CompareConfig, folders: list[Path], names: list[str], manifests: list[dict[str, Any]],
                    threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sentence encoders (embedding runs, and plain encoders such as their teacher) on the held-aside pairs of the
    first embedding run: spearman of cosine similarity."""
    from .distill.embeddings import held_aside_pairs, score_encoder

    for name, manifest in zip(names, manifests):
        kind = (manifest.get("task") or {}).get("type")
        if kind and not is_embedding_run(manifest):
            raise LmcError(f"{name} is a {kind} run; compare sentence-embedding runs with each other and with plain "
                           "encoders (their teacher)")
    reference = next(f for f, m in zip(folders, manifests) if is_embedding_run(m))
    recorded, pairs = held_aside_pairs(reference)
    max_length = recorded.data.max_length
    rows = []
    for name, folder, manifest in zip(names, folders, manifests):
        scored = score_encoder(folder, pairs, max_length, cfg.latency_repeats, threads)
        rows.append({"name": name, "path": str(folder), "made_by": made_by(manifest), "params": scored["params"],
                     "size_mb": round(scored["size_bytes"] / 1e6, 2), "metric": "spearman",
                     "value": round(scored["metrics"]["spearman"], 6), "metrics": scored["metrics"],
                     "latency_ms_b1": scored["latency_ms"]["batch1"], "latency_ms_b32": scored["latency_ms"]["batch32"]})
        log.info("%s: spearman %.4f, %.1f ms @ b32", name, scored["metrics"]["spearman"], scored["latency_ms"]["batch32"])
    data = {"source": recorded.data.data, "seed": recorded.data.split_seed, "pairs": len(pairs),
            "pairs_from": str(reference)}
    return rows, {"task": "sentence-embedding", "data": data, "seq_len": max_length, "lower_is_better": False}


def _task_rows(cfg: CompareConfig, folders: list[Path], names: list[str], teacher_index: int,
               threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every run scored on the teacher's task test rows, then all timed side by side (interleaved rounds)."""
    data_cfg = data_config_for(cfg.data, folders[teacher_index])
    task = load_task(data_cfg)
    if cfg.baseline == "tfidf":
        check_tfidf(task)
    metric = MAIN_METRIC[task.task]
    test = task.splits["test"]
    texts = test["text"].tolist()[:64]
    pairs = test["text_pair"].tolist()[:64] if task.has_pair else None

    rows: list[dict[str, Any]] = []
    calls: dict[tuple[int, int], Any] = {}  # (row index, batch size) -> one forward pass on a fixed batch
    for name, folder in zip(names, folders):
        manifest = read_run_manifest(folder) or {}
        recorded = manifest.get("data", {}).get("test_fingerprint")
        if recorded and recorded != task.split_record["test_fingerprint"]:
            log.warning("%s was tested on other rows (fingerprint %s); the report scores everyone on %s", name,
                        recorded, task.split_record["test_fingerprint"])
        tokenizer = load_tokenizer(folder)
        model = load_run_model(folder, task.labels, task.task == "regression", threads, task=task.task).eval()
        scores = score_split(model, tokenizer, task, "test", data_cfg.max_length, 64)
        rows.append({"name": name, "path": str(folder), "made_by": made_by(manifest), "params": count_params(model),
                     "size_mb": round(weights_size_bytes(folder) / 1e6, 2), "metric": metric,
                     "value": round(scores[metric], 6), "metrics": scores})
        log.info("%s: %s %.4f", name, metric, scores[metric])
        for size in LATENCY_BATCHES:
            batch = fixed_batch(texts, pairs, tokenizer, data_cfg.max_length, size)
            calls[(len(rows) - 1, size)] = functools.partial(model, **batch)
    if cfg.baseline == "tfidf":
        row, predict_texts = tfidf_row(task)
        rows.append(row)
        log.info("%s: %s %.4f", row["name"], metric, row["value"])
        joined = [t + " " + p for t, p in zip(texts, pairs)] if pairs else texts
        for size in LATENCY_BATCHES:
            calls[(len(rows) - 1, size)] = functools.partial(predict_texts, (joined * size)[:size])
    _time_side_by_side(rows, calls, cfg.latency_repeats, threads)
    return rows, {"task": task.task, "data": task.split_record, "seq_len": data_cfg.max_length,
                  "lower_is_better": False}


def _time_side_by_side(rows: list[dict[str, Any]], calls: dict[tuple[int, int], Any], repeats: int,
                       threads: int) -> None:
    """Per row and batch size: median latency, its interquartile range, and every round's time (kept in
    report.json: speedups are taken within each round). Batch 1 gets 3x the rounds: single calls are short and
    noisier."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for size in LATENCY_BATCHES:
            times = interleaved_rounds({index: calls[(index, s)] for index, s in calls if s == size},
                                       repeats * 3 if size == 1 else repeats)
            for index, row in enumerate(rows):
                q1, median, q3 = quartiles(times[index])
                row[f"latency_ms_b{size}"] = round(median, 3)
                row[f"latency_iqr_ms_b{size}"] = [round(q1, 3), round(q3, 3)]
                row[f"latency_rounds_ms_b{size}"] = [round(t, 4) for t in times[index]]
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        log.info("%s: %.1f ms @ b32 (interquartile %.1f-%.1f)", row["name"], row["latency_ms_b32"],
                 *row["latency_iqr_ms_b32"])


def _speedups(rows: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """speedup = reference latency / row latency: within each round when the rows were timed side by side (the
    median of those ratios, with their interquartile range), else from the medians."""
    for row in rows:
        for size in LATENCY_BATCHES:
            mine, theirs = row.get(f"latency_rounds_ms_b{size}"), ref.get(f"latency_rounds_ms_b{size}")
            if mine is not None and theirs is not None:
                q1, median, q3 = quartiles(per_round_ratios(theirs, mine))
                row[f"speedup_b{size}"], row[f"speedup_iqr_b{size}"] = round(median, 3), [round(q1, 3), round(q3, 3)]
            else:
                row[f"speedup_b{size}"] = round(ref[f"latency_ms_b{size}"] / row[f"latency_ms_b{size}"], 3)


def _language_model_rows(cfg: CompareConfig, folders: list[Path], names: list[str], teacher_index: int,
                         threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pre-trained (or generally distilled) language models: perplexity on the teacher run's fixed validation set,
    which only means the same thing for runs that share the teacher's tokenizer."""
    from .evaluate import measure_latency
    from .models.load import load_for_pretraining, resolve
    from .pretrain import collator, latency_batch, run_validation_set, score_lm

    for name, folder in zip(names, folders):  # before any slow work
        if not is_language_model(read_run_manifest(folder) or {}):
            raise LmcError(f"{name} is not a language-model run; compare pre-trained models with each other and "
                           "task models with each other")
    pcfg, tokenizer, data, source = run_validation_set(folders[teacher_index])
    scoring = "clm" if pcfg.objective == "clm" else "mlm"  # sentence-pair heads are not part of the comparison
    collate = collator(tokenizer, pcfg.objective)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for name, folder in zip(names, folders):
            if load_tokenizer(folder).get_vocab() != tokenizer.get_vocab():
                raise LmcError(f"{name} has another tokenizer than {names[teacher_index]}: perplexities over different "
                               "vocabularies cannot be compared")
            model = load_for_pretraining(resolve(str(folder)), tokenizer, scoring, pcfg.train.seed).eval()
            scores = score_lm(model, data.validation, collate, scoring, 64)
            latency = measure_latency(model, lambda size: latency_batch(collate, data.validation, size),
                                      cfg.latency_repeats)
            rows.append({"name": name, "path": str(folder), "made_by": made_by(read_run_manifest(folder) or {}),
                         "params": count_params(model), "size_mb": round(weights_size_bytes(folder) / 1e6, 2),
                         "metric": "perplexity", "value": round(scores["perplexity"], 4), "metrics": scores,
                         "latency_ms_b1": latency["batch1"], "latency_ms_b32": latency["batch32"]})
            log.info("%s: perplexity %.2f, %.1f ms @ b32", name, scores["perplexity"], latency["batch32"])
            del model
    finally:
        torch.set_num_threads(previous)
    return rows, {"task": pcfg.objective, "data": {"source": source, **data.record}, "seq_len": pcfg.data.max_length,
                  "lower_is_better": True}


# ------------------------------------------------------------------------------------------------ rendering

COLUMNS = [("model", "name"), ("made by", "made_by"), ("params", "params"), ("size MB", "size_mb"), ("value", "value"),
           ("retention", "retention"), ("ms b1", "latency_ms_b1"), ("ms b32", "latency_ms_b32"),
           ("speedup b1", "speedup_b1"), ("speedup b32", "speedup_b32")]


def _headers(report: dict[str, Any]) -> list[str]:
    """Column titles, the value column named by the task metric (accuracy, pearson, ...)."""
    metric = report["rows"][0]["metric"] if report["rows"] else "value"
    return [metric if key == "value" else title for title, key in COLUMNS]


def _shown(key: str, row: dict[str, Any]) -> str:
    """A table cell: latencies and speedups with their interquartile range when they were timed side by side."""
    spread = row.get(key.replace("latency_ms_", "latency_iqr_ms_").replace("speedup_", "speedup_iqr_"))
    if key.startswith(("latency_ms_b", "speedup_b")) and spread and row.get(key) is not None:
        unit = "x" if key.startswith("speedup") else ""
        return f"{_cell(key, row[key])} ({spread[0]:.{2 if unit else 1}f}–{spread[1]:.{2 if unit else 1}f}{unit})"
    return _cell(key, row.get(key))


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{value / 1e6:.2f}M"
    if key == "retention":
        return f"{value:.1%}"
    if key.startswith("speedup"):
        return f"{value:.2f}x"
    if key == "value":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _setup_line(report: dict[str, Any]) -> str:
    s, data = report["setup"], report["data"]
    if "sizes" in data:
        rows = f"test rows: {data['sizes']['test']} (fingerprint {data['test_fingerprint']})"
    elif "pairs" in data:  # sentence embeddings: held-aside pairs of an embedding run
        rows = (f"held-aside sentence pairs: {data['pairs']} from the validation documents of {data['source']} "
                f"(split seed {data['seed']})")
    else:  # language models: the teacher run's fixed masked validation set
        rows = (f"validation examples: {data['examples']['validation']} of {data['source']} "
                f"(fingerprint {data['validation_fingerprint']})")
    cpu = s.get("processor") or {}
    where = f" on {cpu.get('model')} ({', '.join(cpu.get('isa') or []) or 'no AVX2'})" if cpu else ""
    how = ("models interleaved round by round, speedups within each round, interquartile range in brackets"
           if s.get("interleaved") else "all models in one process")
    return (f"CPU latency{where}: median of {s['latency_repeats']} rounds after warm-up ({3 * s['latency_repeats']} "
            f"at batch 1), sequence length "
            f"{s['seq_len']}, {s['threads']} threads, {how}; {rows}; "
            f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}.")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# lmcompress comparison — teacher: {report['teacher']}", "", _setup_line(report), "",
             "| " + " | ".join(_headers(report)) + " | Pareto |", "|" + "---|" * (len(COLUMNS) + 1)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(_shown(k, row) for _, k in COLUMNS) + f" | {'yes' if row['pareto'] else ''} |")
    lines += ["", "![metric vs latency](pareto.png)", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any], png: Path) -> str:
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _headers(report)) + "<th>Pareto</th>"
    body = []
    for row in report["rows"]:
        cls = ' class="teacher"' if row["name"] == report["teacher"] else ""
        cells = "".join(f"<td>{html.escape(_shown(k, row))}</td>" for _, k in COLUMNS)
        body.append(f"<tr{cls}>{cells}<td>{'★' if row['pareto'] else ''}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmcompress comparison</title>
<style>
body {{ font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
        color: #1f2328; padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; }} p.setup {{ color: #57606a; font-size: .9rem; }}
table {{ border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }}
th, td {{ padding: .45rem .55rem; border-bottom: 1px solid #d0d7de; text-align: right; }}
div.scroll {{ overflow-x: auto; }} td:nth-child(2) {{ max-width: 16rem; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
td:nth-child(2) {{ color: #57606a; font-size: .85rem; }}
th {{ background: #f6f8fa; }} tr.teacher td {{ font-weight: 600; background: #fff8e1; }}
img {{ max-width: 100%; margin-top: 1.5rem; border: 1px solid #d0d7de; }}
</style></head><body>
<h1>lmcompress comparison — teacher: {html.escape(report['teacher'])}</h1>
<p class="setup">{html.escape(_setup_line(report))}</p>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></div>
<img alt="metric versus batch-32 latency, Pareto front" src="data:image/png;base64,{image}">
</body></html>
"""


def plot_pareto(rows: list[dict[str, Any]], metric: str, path: Path, lower_is_better: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = [r["latency_ms_b32"] for r in rows]
    ys = [r["value"] for r in rows]
    ax.scatter(xs, ys, c=["#d1242f" if r["pareto"] else "#8c959f" for r in rows], zorder=3)
    for row in rows:
        ax.annotate(row["name"], (row["latency_ms_b32"], row["value"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    front = sorted((r["latency_ms_b32"], r["value"]) for r in rows if r["pareto"])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#d1242f", lw=1.2,
                label="Pareto front", zorder=2)
        ax.legend(loc="upper right" if lower_is_better else "lower right", fontsize=8)
    ax.set_xscale("log")
    low, high = min(xs) / 1.25, max(xs) * 1.35  # room for the labels of the extreme points
    ax.set_xlim(low, high)
    ticks = [m * 10 ** e for e in range(-2, 6) for m in (1, 2, 5) if low <= m * 10 ** e <= high]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))  # 1-2-5 steps: never crowded
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("CPU latency at batch 32 (ms, log scale) — lower is better")
    ax.set_ylabel(f"validation {metric} — lower is better" if lower_is_better else f"test {metric} — higher is better")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"teacher: {report['teacher']}")
    for title in _headers(report):
        table.add_column(title, justify="left" if title in ("model", "made by") else "right")
    for row in report["rows"]:
        table.add_row(*(_shown(k, row) for _, k in COLUMNS))
    console().print(table)
