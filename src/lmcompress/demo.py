"""`lmcompress demo`: the real `minilm-l6` fine-tuned on the real `rotten-tomatoes`, then `lmcompress auto` asked
for a model at least 10x faster that keeps 97% of the teacher's accuracy.

The teacher is the first step of the built-in recipe (recipes/demo.yaml); the rest of that recipe, the hand-made
chain that `auto` replaces, stays as an example (`lmcompress run demo`). Re-running skips the complete teacher and
continues the search. `--quick` is a smoke run: 1,000 training rows, one epoch, a 20-minute search (same test rows),
written to a separate folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from . import catalog
from .config import AutoConfig
from .pipeline import builtin_recipes, run_recipe
from .stages import STAGES

log = logging.getLogger("lmcompress")
QUICK_ROWS = 1000
TARGET = {"min_retention": 0.97, "min_speedup": 10.0}
SEARCH = {"time_budget": "45m"}
# the smoke run times one int8 runtime: timing OpenVINO's too took 10 of its 20 minutes on a busy 2-core machine
QUICK_SEARCH = {"time_budget": "20m", "shortlist": 1, "screen_rows": 256, "epochs": 1.0, "backend": "onnxruntime"}


def demo_recipe(quick: bool) -> dict[str, Any]:
    """The hand-made recipe (every step; `quick`: 1,000 rows and one epoch per step)."""
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


def run_demo(quick: bool = False, out: str = "runs/demo", overwrite: bool = False) -> dict[str, Any]:
    for name in ("minilm-l6", "rotten-tomatoes"):
        catalog.get(name).require()  # one-line error naming the install command if missing
    root = Path(out) / "quick" if quick else Path(out)
    log.info("demo%s: %s", " (quick: 1,000 training rows, 1 epoch, a 20-minute search)" if quick else "", root)
    teacher = run_recipe(demo_recipe(quick), out=str(root), overwrite=overwrite, only=["teacher"])
    search = AutoConfig(teacher=teacher["paths"]["teacher"], out=str(root / "auto"), overwrite=overwrite,
                        **TARGET, **(QUICK_SEARCH if quick else SEARCH))
    result = STAGES["auto"].run(search)
    return result | {"teacher": teacher["paths"]["teacher"], "teacher_wall_time_s": teacher["wall_time_s"]}
