"""The side-by-side report of `lmcompress compare` (`stages/compare.py`): the Pareto front, and report.md, the
self-contained report.html, pareto.png (metric vs latency) and the table printed, from report.json's rows."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

from rich.table import Table

from .console import console
from .machine import describe_processor
from .runs.manifest import LM_OBJECTIVES

log = logging.getLogger("lmcompress")


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, value) points where lower latency and higher value are better: which are not dominated."""
    flags = []
    for i, (lat_i, val_i) in enumerate(points):
        dominated = any(lat_j <= lat_i and val_j >= val_i and (lat_j < lat_i or val_j > val_i)
                        for j, (lat_j, val_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


# ------------------------------------------------------------------------------------------------ rendering

COLUMNS = [("model", "name"), ("made by", "made_by"), ("backend", "backend"), ("params", "params"),
           ("size MB", "size_mb"), ("value", "value"),
           ("retention", "retention"), ("ms b1", "latency_ms_b1"), ("ms b32", "latency_ms_b32"),
           ("speedup b1", "speedup_b1"), ("speedup b32", "speedup_b32"), ("GFLOP/s b32", "gflops_b32"),
           ("% of peak", "peak_share_b32")]


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
    if key in ("retention", "peak_share_b32"):
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
    where = f" on {describe_processor(cpu)}" if cpu else ""
    how = ("models interleaved round by round, speedups within each round, interquartile range in brackets"
           if s.get("interleaved") else "all models in one process")
    if any(row.get("backends") for row in report["rows"]):
        teacher = next((row for row in report["rows"] if row["name"] == report["teacher"]), {})
        on_torch = "torch" in (teacher.get("backends") or {}) or teacher.get("backend") == "torch"
        on = "PyTorch fp32" if on_torch else f"its own runtime ({teacher.get('backend')})"
        how += f"; each model on its fastest backend, speedups against the teacher on {on}"
    peaks = s.get("matmul_peak_gflops") or {}
    if any(peaks.values()):  # the int8 peak counts integer multiply-adds: GOP/s
        how += ("; % of peak = achieved GFLOP/s (the config's FLOPs / batch-32 latency) over this machine's measured "
                "matmul peak: " + ", ".join(f"{k} {v:.0f} {'GOP/s' if k == 'int8' else 'GFLOP/s'}"
                                            for k, v in peaks.items() if v))
    return (f"CPU latency{where}: median of {s['latency_repeats']} rounds after warm-up ({3 * s['latency_repeats']} "
            f"at batch 1), sequence length "
            f"{s['seq_len']}, {s['threads']} threads, {how}; {rows}; "
            f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}.")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# lmcompress comparison — teacher: {report['teacher']}", "", _setup_line(report), "",
             "| " + " | ".join(_headers(report)) + " | Pareto |", "|" + "---|" * (len(COLUMNS) + 1)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(_shown(k, row) for _, k in COLUMNS) + f" | {'yes' if row['pareto'] else ''} |")
    lines += _backend_table(report) + _generation_table(report) + _use_lines(report)
    lines += ["", "![metric vs latency](pareto.png)", ""]
    return "\n".join(lines)


MASKED_LM_OBJECTIVES = tuple(o for o in LM_OBJECTIVES if o != "clm")


def use_commands(run: str | Path) -> list[str]:
    """How to use a run: predictions for a file, and an HTTP server (stages/predict.py, stages/serve.py)."""
    return [f"lmcompress predict --model {run} --data texts.csv --out predictions.jsonl",
            f"lmcompress serve --model {run}"]


def _use_lines(report: dict[str, Any]) -> list[str]:
    if report.get("task") in MASKED_LM_OBJECTIVES:  # predict and serve refuse masked-LM runs: nothing to suggest
        return []
    front = [row for row in report["rows"] if row["pareto"] and row.get("run") and row["name"] != report["teacher"]]
    if not front:
        return []
    lines = ["", "Use a model on the front (any format; `lmcompress.load(run)` in Python):", "", "```bash"]
    for row in front:
        lines += [f"# {row['name']}", *use_commands(row["run"])]
    return lines + ["```"]


def _backend_table(report: dict[str, Any]) -> list[str]:
    """Every model on every backend it was timed on (compare --backends auto): batch-32 latency, interquartile
    range, and the score served by that backend."""
    timed = [row for row in report["rows"] if row.get("backends")]
    if not timed:
        return []
    names = sorted({b for row in timed for b in row["backends"]})
    lines = ["", "Every backend, ms at batch 32 (interquartile range) and the score it served:", "",
             "| model | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for row in timed:
        cells = []
        for name in names:
            e = row["backends"].get(name)
            cells.append("-" if e is None else f"{e['latency_ms_b32']:.1f} ({e['latency_iqr_ms_b32'][0]:.1f}–"
                         f"{e['latency_iqr_ms_b32'][1]:.1f}); {e['value']:.4f}")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return lines


def _generation_table(report: dict[str, Any]) -> list[str]:
    """Causal LMs: time to first token and decode speed at batch 1 (greedy, KV cache), timed side by side."""
    timed = [row for row in report["rows"] if row.get("generation")]
    if not timed:
        return []
    g = timed[0]["generation"]
    lines = ["", f"Generation at batch 1 (greedy, KV cache, {g['prompt_tokens']}-token prompt, {g['new_tokens']} new "
             f"tokens, {g['rounds']} interleaved rounds; median and interquartile range):", "",
             "| model | time to first token ms | decode tokens/s |", "|---|---:|---:|"]
    for row in timed:
        g = row["generation"]
        lines.append(f"| {row['name']} | {g['ttft_ms']:.1f} ({g['ttft_iqr_ms'][0]:.1f}–{g['ttft_iqr_ms'][1]:.1f}) | "
                     f"{g['decode_tokens_per_s']:.1f} ({g['decode_iqr'][0]:.1f}–{g['decode_iqr'][1]:.1f}) |")
    return lines


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
    import matplotlib  # heavy (fonts, backends): only when a report is drawn

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
    table = Table(title=f"teacher: {report['teacher']}")
    for title in _headers(report):
        table.add_column(title, justify="left" if title in ("model", "made by") else "right")
    for row in report["rows"]:
        table.add_row(*(_shown(k, row) for _, k in COLUMNS))
    console().print(table)
