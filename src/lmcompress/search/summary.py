"""What `auto` hands back: the chosen row in the report (`"chosen"` in report.json), the search (candidates,
predicted and measured latency) in report.json, report.md and candidates.png, the chosen model in OUT/best, and one
line saying whether the target was met."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..console import console
from ..machine import describe_processor, processor
from ..report import use_commands
from ..runs.files import replace_folder, write_json_atomic
from ..runs.manifest import TrainingRecord, read_manifest
from .state import Candidate, Search

log = logging.getLogger("lmcompress")


def choose(rows: list[dict[str, Any]], validation: dict[str, float], search: Search) -> tuple[dict[str, Any], bool]:
    """(row, met): of the rows measured fast enough in the report, the fastest whose validation retention
    (`validation[row name]`) meets the target; else the best point reached (the most retained of the fast-enough
    rows, else the fastest row). The test rows decide nothing: they only report."""
    size = search.cfg.batch_size
    fast = [r for r in rows[1:] if search.target.met(r[f"latency_ms_b{size}"], r[f"speedup_b{size}"])]
    good = [r for r in fast if validation.get(r["name"], 0) >= search.cfg.min_retention]
    if good:
        return min(good, key=lambda r: r[f"latency_ms_b{size}"]), True
    if fast:
        return max(fast, key=lambda r: validation.get(r["name"], 0)), False
    return min(rows[1:], key=lambda r: r[f"latency_ms_b{size}"]), False


VARIANT_BACKEND = {"fp32": "torch", "onnx-int8": "onnxruntime", "openvino-int8": "openvino"}
EXPORT_HINT = {"onnxruntime": "lmcompress export", "openvino": "lmcompress export --format openvino",
               "openvino-bf16": "lmcompress export --format openvino --precision bf16"}


def row_of(rows: list[dict[str, Any]], c: Candidate) -> dict[str, Any]:
    return next(r for r in rows if Path(r["path"]).resolve() == c.deploy.resolve())


def _latency_check(search: Search, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained candidate: the speedup and latency predicted from random weights vs measured in the report
    (the speedups are within-round ratios in both; the milliseconds were measured minutes apart)."""
    size = search.cfg.batch_size
    out = []
    for c in (c for c in search.candidates if c.trained):
        row = row_of(rows, c)  # the prediction timed the variant on its own runtime: compare with the same
        row = (row.get("backends") or {}).get(VARIANT_BACKEND.get(c.variant, ""), row)
        measured = row[f"latency_ms_b{size}"]
        out.append({"name": c.name, "row": row["name"], "predicted_speedup": c.predicted["speedup"],
                    "measured_speedup": row[f"speedup_b{size}"], "predicted_ms": c.predicted["latency_ms"],
                    "measured_ms": measured, "measured_over_predicted": round(measured / c.predicted["latency_ms"], 3)})
    return out


def _markdown(search: Search, chosen: dict[str, Any], check: list[dict[str, Any]], line: str, where: str) -> str:
    size = search.cfg.batch_size
    lines = ["", "## auto: the search", "", line, "",
             f"Target: retention >= {search.cfg.min_retention:.0%} on the validation rows (the search decides on "
             f"them; the table above reports the test rows), speed {search.target.describe()} at batch {size} as "
             f"measured in this report. Chosen row: **{chosen['name']}** (copied to `best/`).", "",
             _augmentation_line(search), "", where, "",
             "Use it:", "", "```bash", *use_commands(search.root / "best"), "```", "",
             "| candidate | origin | params | predicted speedup | measured as trained | start (validation) "
             "| screen retention (validation) | validation retention | rows with teacher outputs | trained (rounds) "
             "| note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in search.candidates:
        start = f"{c.start_score:.1%}" if c.start_score is not None else "-"
        screen = f"{c.screen_score:.1%}" if c.screen_score is not None else "-"
        val = f"{c.validation_retention:.1%}" if c.validation_retention is not None else "-"
        trained = (f"yes ({c.rounds}, best {c.best_round})" if c.rounds > 1 else "yes") if c.trained else "no"
        timed = f"{c.measured['speedup']:.1f}x" if c.measured else "-"
        params = f"{c.predicted['params'] / 1e6:.1f}M" if "params" in c.predicted else "-"
        lines.append(f"| {c.name} | {c.origin} | {params} | {c.predicted['speedup']:.1f}x | "
                     f"{timed} | {start} | {screen} | {val} | {_rows_seen(search, c)} | {trained} | {c.reason} |")
    lines += ["", "Latency predicted from random weights vs measured in this report:", "",
              "| candidate | predicted ms | measured ms | measured / predicted |", "|---|---|---|---|"]
    lines += [f"| {x['name']} | {x['predicted_ms']:.1f} | {x['measured_ms']:.1f} | {x['measured_over_predicted']:.2f} |"
              for x in check]
    return "\n".join(lines) + "\n\n![candidates](candidates.png)\n"


def _rows_seen(search: Search, c: Candidate) -> str:
    """The rows a trained student learnt the teacher's outputs on: labelled (+ augmentation)."""
    if not c.trained or c.shape == search.teacher_shape:  # the teacher's own int8 learns nothing
        return "-"
    if c.shape.static or not search.augment_rows:  # (the static student's table comes from the vocabulary)
        return f"{search.train_rows:,}"
    return f"{search.train_rows:,} + {search.augment_rows:,}"


def _augmentation_line(search: Search) -> str:
    """What the students learnt from beside the labelled rows, and why that much."""
    labelled = f"Rows: the {search.train_rows:,} labelled rows"
    if search.augment_rows:
        return (f"{labelled} and {search.augment_rows:,} of the {search.augment_available:,} "
                f"{search.augment_source}, labelled by the teacher: as many as fit in the time budget at the screens' "
                "measured pace (every transformer student learnt from the teacher's outputs on them).")
    if search.augment_available:
        return (f"{labelled} only: none of the {search.augment_available:,} {search.augment_source} fit in the time "
                "budget at the screens' measured pace, or no transformer student was screened (re-running with a "
                "larger --time-budget plans again while no student has started training).")
    if search.task != "classification" or search.sample[1] is not None or search.cfg.augment_spans == 0:
        return f"{labelled} only (no extra texts: --augment-spans 0, or a task whose rows are not single texts)."
    return f"{labelled} only (no labelled text has the 5 words a word span needs)."


def _place(training: TrainingRecord | None) -> str | None:
    if training is None or training.device is None:  # a plain folder, or recorded before devices were
        return None
    return f"{training.device}, {training.precision}"


def _where_line(search: Search) -> str:
    """Where the work a GPU speeds up ran (fine-tuning, the teacher's passes, distillation: on CUDA when there is
    one) and where every timing ran (the CPU threads of this machine, the serving side, whatever trained)."""
    students: dict[str, list[str]] = {}
    for c in (c for c in search.candidates if c.trained and c.shape != search.teacher_shape):
        place = _place(search.executor.training(search, c, "student"))
        if place:
            students.setdefault(place, []).append(c.name)
    teacher = _place(read_manifest(search.teacher_dir).train)
    parts = [f"the teacher was trained on {teacher}"] if teacher else []
    parts += [f"{', '.join(names)} trained (with the teacher's passes) on {place}"
              for place, names in students.items()]
    return (f"Where: {'; '.join(parts) or 'no training recorded its device'}. Every timing ran on the CPU "
            f"({search.threads} threads, {describe_processor(processor())}).")


def plot_candidates(search: Search, records: list[dict[str, Any]], check: list[dict[str, Any]],
                    retention: dict[str, float], path: Path) -> None:
    """Every timed shape at its predicted speedup (ticks), trained candidates from predicted to measured speed at
    their validation retention (`retention[row name]`, what the search decides on)."""
    import matplotlib  # heavy: only when a search report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = min([search.cfg.min_retention - 0.05] + [v for v in retention.values() if v])
    ax.plot([r["speedup"] for r in records], [floor] * len(records), "|", color="0.6", markersize=12,
            label="timed shapes (random weights)")
    for x in check:
        y = retention.get(x["row"], floor)
        ax.annotate("", (x["measured_speedup"], y), (x["predicted_speedup"], y), arrowprops={"arrowstyle": "->"})
        ax.plot(x["predicted_speedup"], y, "o", mfc="none", color="C0")
        ax.plot(x["measured_speedup"], y, "o", color="C0")
        ax.annotate(x["name"], (x["measured_speedup"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(search.cfg.min_retention, color="C3", linestyle="--", linewidth=1, label="target retention")
    ax.axvline(search.target.required_speedup(search.teacher_ms), color="C2", linestyle="--", linewidth=1,
               label="target speedup")
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup over the teacher at batch {search.cfg.batch_size} (hollow: predicted, filled: measured)")
    ax.set_ylabel("retention (validation rows)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _copy_best(source: Path, target: Path) -> None:
    """OUT/best: a plain copy of the chosen run directory (written aside, then swapped into place)."""
    with replace_folder(target) as built:
        shutil.copytree(source, built, dirs_exist_ok=True)


def _share(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def _verdict(search: Search, chosen: dict[str, Any], validation: float | None, met: bool) -> str:
    size, goal = search.cfg.batch_size, search.cfg.min_retention
    backend = chosen.get("backend", "torch")
    if chosen.get("backends") and backend in EXPORT_HINT:  # a PyTorch checkpoint served fastest by another runtime
        backend += f", deploy with {EXPORT_HINT[backend]}"
    figures = (f"{chosen['name']} on {backend}: {chosen[f'speedup_b{size}']:.1f}x faster at batch {size} "
               f"({chosen[f'latency_ms_b{size}']:.1f} ms), {chosen['params'] / 1e6:.1f}M params, retention "
               f"{_share(validation)} on validation and {_share(chosen['retention'])} on test rows")
    if met:
        caveat = "" if (chosen["retention"] or 0) >= goal else f" (the test rows keep less than {goal:.0%})"
        return f"target met by {figures}{caveat}"
    fast = search.target.met(chosen[f"latency_ms_b{size}"], chosen[f"speedup_b{size}"])
    gap = (f"{100 * (goal - (validation or 0)):.1f} points of retention short" if fast else
           f"speed {chosen[f'speedup_b{size}']:.1f}x vs {search.target.describe()}")
    return (f"target not met (retention >= {goal:.0%}, {search.target.describe()}); best point reached: {figures} "
            f"- {gap}")


def hand_back(search: Search, report: dict[str, Any], records: list[dict[str, Any]],
              wall_s: float) -> dict[str, Any]:
    rows = report["rows"]
    trained = [c for c in search.candidates if c.trained]
    validation = {row_of(rows, c)["name"]: c.validation_retention for c in trained}
    chosen, met = choose(rows, validation, search)
    check = _latency_check(search, rows)
    line = _verdict(search, chosen, validation.get(chosen["name"]), met)
    where = _where_line(search)
    folder = Path(report["path"])
    deploy = {c.name: c.deploy for c in trained}
    _copy_best(next(c.deploy for c in trained if row_of(rows, c) is chosen), search.root / "best")
    report = {k: v for k, v in report.items() if k != "path"} | {"chosen": chosen["name"], "auto": {
        "target_met": met, "verdict": line, "where": where, "min_retention": search.cfg.min_retention,
        "speed_target": search.target.describe(), "batch_size": search.cfg.batch_size,
        "teacher_ms": search.teacher_ms, "validation_metric": search.metric,
        "teacher_validation": search.teacher_validation, "candidates": [c.record() for c in search.candidates],
        "rows": {"labelled": search.train_rows, "augmentation": search.augment_rows,
                 "augmentation_available": search.augment_available, "augmentation_source": search.augment_source},
        "latency_check": check, "deploy": {k: str(v) for k, v in deploy.items()}, "wall_time_s": round(wall_s, 1)}}
    write_json_atomic(folder / "report.json", report)
    with (folder / "report.md").open("a", encoding="utf-8") as handle:
        handle.write(_markdown(search, chosen, check, line, where))
    plot_candidates(search, records, check, validation, folder / "candidates.png")
    search.event("chosen", name=chosen["name"], met=met, verdict=line)
    console().print(("[green]" if met else "[yellow]") + line + "[/]")
    console().print(f"report: {folder}/report.md (search: candidates.png, {search.root}/search.jsonl); model: "
                    f"{search.root}/best; wall time {wall_s / 60:.1f} min")
    console().print("use it: " + "  |  ".join(use_commands(search.root / "best")), soft_wrap=True)
    return {"split": "test", "metrics": {chosen["metric"]: chosen["value"]}, "params": chosen["params"],
            "size_bytes": int(chosen["size_mb"] * 1e6), "path": str(search.root / "best"), "target_met": met,
            "chosen": chosen["name"], "verdict": line}
