"""`lmcompress demo`: the built-in recipe (recipes/demo.yaml) on the real `minilm-l6` and `rotten-tomatoes`.

Fine-tunes the teacher, makes a distilled, a pruned, an ALBERT and two int8 variants, and compares them all in one
process. Re-running skips complete steps and resumes an interrupted one. `--quick` is a smoke run of the same recipe
on 1,000 training rows with one epoch per step (same test rows), written to a separate folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from . import catalog
from .console import console
from .pipeline import builtin_recipes, run_recipe

log = logging.getLogger("lmcompress")
QUICK_ROWS = 1000


def demo_recipe(quick: bool) -> dict[str, Any]:
    recipe = yaml.safe_load(builtin_recipes()["demo"].read_text(encoding="utf-8"))
    if not quick:
        return recipe
    for step in recipe["steps"]:
        if "train" in step:
            step["train"] = dict(step["train"], epochs=1, learning_rate=1e-4)
        if step["stage"] in ("finetune", "distill", "prune"):
            step["data"] = dict(step.get("data", {}), max_train_examples=QUICK_ROWS)
        if step["stage"] == "prune":
            step["calibration_examples"] = 128
        if step["stage"] == "compare":
            step["latency_repeats"] = 3
    return recipe


def best_variant(rows: list[dict[str, Any]], teacher: str, min_retention: float = 0.97) -> dict[str, Any] | None:
    """The fastest model at batch 32 that keeps >= min_retention of the teacher's metric."""
    keep = [r for r in rows if r["name"] != teacher and not r.get("reference") and (r["retention"] or 0) >= min_retention]
    return max(keep, key=lambda r: r["speedup_b32"], default=None)


def run_demo(quick: bool = False, out: str = "runs/demo", overwrite: bool = False) -> dict[str, Any]:
    for name in ("minilm-l6", "rotten-tomatoes"):
        catalog.get(name).require()  # one-line error naming the install command if missing
    root = Path(out) / "quick" if quick else Path(out)
    log.info("demo%s: %s", " (quick: 1,000 training rows, 1 epoch per step)" if quick else "", root)
    result = run_recipe(demo_recipe(quick), out=str(root), overwrite=overwrite)
    report_dir = Path(result["paths"]["report"])
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    screen = console()
    steps = ", ".join(f"{s['step']} {s['wall_s']:.0f}s" if s["status"] == "done" else f"{s['step']} (reused)"
                      for s in result["steps"])
    screen.print(f"steps: {steps}")
    best = best_variant(report["rows"], report["teacher"])
    if best:
        screen.print(f"best variant at >= 97% of the teacher's {report['rows'][0]['metric']}: [bold]{best['name']}[/] "
                     f"— {best['speedup_b32']:.1f}x faster at batch 32, {best['retention']:.1%} retained, "
                     f"{best['params'] / 1e6:.1f}M params")
    else:
        screen.print("no variant keeps >= 97% of the teacher's metric in this run")
    screen.print(f"report: {report_dir}/report.html (also report.md, report.json, pareto.png); "
                 f"runs: {root}/  demo wall time {result['wall_time_s']:.0f} s")
    return {"report": report, "steps": result["steps"], "wall_time_s": result["wall_time_s"], "best": best}
