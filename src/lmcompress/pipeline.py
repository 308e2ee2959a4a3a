"""`lmcompress run RECIPE`: a YAML recipe chains stages; complete steps are skipped, interrupted ones resumed.

    name: demo
    out: runs/demo                 # every step writes OUT/STEP_NAME (steps cannot choose their own out)
    steps:
      - {name: teacher, stage: finetune, model: minilm-l6, data: {data: rotten-tomatoes, max_length: 64}}
      - {name: student, stage: distill, teacher: teacher, student: "layers=2"}
      - {name: report, stage: compare, runs: [teacher, student]}

A step's keys are exactly its stage's config keys (as in `--config` YAML), checked for every step before the first
one runs, so a typo in step 5 fails in a second, not after hours of step 1. A value naming an earlier step (in
`model`, `teacher`, `student`, `runs`) means that step's run directory.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import from_dict, load_yaml
from .errors import LmcError
from .runs.manifest import is_complete
from .runs.rundir import RunDir
from .stages import STAGES

log = logging.getLogger("lmcompress")

REFERENCE_KEYS = ("model", "teacher", "student", "tokenizer")
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Step:
    name: str
    stage: str
    config: Any  # the stage's config dataclass, out = recipe out / name

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def builtin_recipes() -> dict[str, Path]:
    folder = resources.files("lmcompress") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def locate(recipe: str) -> Path:
    """A recipe path, or the name of a built-in recipe (`demo`)."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if recipe in builtin:
        return builtin[recipe]
    raise LmcError(f"recipe {recipe} is neither a file nor a built-in recipe ({', '.join(sorted(builtin))})")


def parse(raw: dict[str, Any], where: str, out: str | None = None) -> tuple[str, list[Step]]:
    """Recipe mapping -> (name, steps with typed configs). Every error names the step and key."""
    unknown = sorted(set(raw) - {"name", "out", "steps", "description"})
    if unknown:
        raise LmcError(f"{where}: unknown key(s) {', '.join(unknown)}; a recipe has name, description, out, steps")
    name = str(raw.get("name") or Path(where).stem)
    root = Path(out or raw.get("out") or f"runs/{name}").expanduser()
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise LmcError(f"{where}: 'steps' must be a non-empty list of stages")
    steps: list[Step] = []
    all_names = [item.get("name") for item in steps_raw if isinstance(item, dict)]
    for i, item in enumerate(steps_raw, start=1):
        if not isinstance(item, dict):
            raise LmcError(f"{where}: step {i} must be a mapping with name, stage and the stage's keys")
        item = dict(item)
        step_name, stage = item.pop("name", None), item.pop("stage", None)
        label = f"{where}: step {i} ({step_name or 'unnamed'})"
        if not isinstance(step_name, str) or not STEP_NAME.match(step_name):
            raise LmcError(f"{label}: name must be letters, digits, '.', '_' or '-' (it becomes the folder name)")
        if step_name in {s.name for s in steps}:
            raise LmcError(f"{label}: the name {step_name} is used twice")
        if stage not in STAGES or not STAGES[stage].in_recipes:
            steps_allowed = ", ".join(name for name, s in STAGES.items() if s.in_recipes)
            raise LmcError(f"{label}: stage must be one of {steps_allowed}, got {stage!r} (auto is a search of its "
                           "own: run `lmcompress auto`; predict and serve use a run, they do not make one)")
        if "out" in item:
            raise LmcError(f"{label}: a step writes to {root}/{step_name}; remove its 'out' key")
        done = {s.name: str(s.out) for s in steps}
        referenced = [item.get(k) for k in REFERENCE_KEYS] + list(item.get("runs") or [])
        later = [r for r in referenced if isinstance(r, str) and r in all_names and r not in done]
        if later:
            raise LmcError(f"{label}: uses step {later[0]}, which runs later (or is this step); reorder the steps")
        for key in REFERENCE_KEYS:
            if isinstance(item.get(key), str) and item[key] in done:
                item[key] = done[item[key]]
        if STAGES[stage].positional_runs:  # compare's runs may name earlier steps too
            item["runs"] = [done.get(r, r) if isinstance(r, str) else r for r in item.get("runs", [])]
        cls = STAGES[stage].config
        item["out"] = str(root / step_name)
        steps.append(Step(step_name, stage, from_dict(cls, item, where=label)))
    return name, steps


def run_recipe(recipe: str | Path | dict[str, Any], out: str | None = None, overwrite: bool = False,
               only: list[str] | None = None) -> dict[str, Any]:
    """Run the steps in order; skip complete ones (unless `overwrite`), resume interrupted ones."""
    if isinstance(recipe, dict):
        name, steps = parse(recipe, "recipe", out)
    else:
        path = locate(str(recipe))
        name, steps = parse(load_yaml(path), str(path), out)
    if only:
        missing = sorted(set(only) - {s.name for s in steps})
        if missing:
            raise LmcError(f"--only {', '.join(missing)}: the recipe's steps are {', '.join(s.name for s in steps)}")
    results: dict[str, Any] = {}
    summary = []
    ran: set[str] = set()  # run dirs (re)made now: a report over them is stale
    started = time.perf_counter()
    for index, step in enumerate(steps, start=1):
        header = f"[{index}/{len(steps)}] {step.stage} {step.name} -> {step.out}"
        if only and step.name not in only:
            summary.append({"step": step.name, "stage": step.stage, "status": "not selected", "wall_s": 0.0})
            continue
        stale = STAGES[step.stage].positional_runs and any(r in ran for r in step.config.runs)
        if _is_done(step) and not overwrite and not stale:
            log.info("%s: complete, skipped", header)
            summary.append({"step": step.name, "stage": step.stage, "status": "skipped (complete)", "wall_s": 0.0})
            continue
        cfg = step.config
        if hasattr(cfg, "overwrite"):
            cfg.overwrite = overwrite or stale or step.out.exists()
        if STAGES[step.stage].resumes and RunDir(step.out).has_checkpoint() and not overwrite:
            cfg.resume = None  # the stage continues it if the step's options are unchanged, else names what changed
            log.info("%s: resuming the interrupted run", header)
        else:
            log.info("%s", header)
        t0 = time.perf_counter()
        results[step.name] = STAGES[step.stage].run(cfg)
        ran.add(str(step.out))
        summary.append({"step": step.name, "stage": step.stage, "status": "done",
                        "wall_s": round(time.perf_counter() - t0, 1)})
    return {"name": name, "steps": summary, "results": results, "wall_time_s": round(time.perf_counter() - started, 1),
            "paths": {s.name: str(s.out) for s in steps}}


def _is_done(step: Step) -> bool:
    makes = STAGES[step.stage].makes
    if makes == "report":
        return (step.out / "report.json").is_file()
    if makes == "measurement":
        return False  # cheap, and its point is a fresh measurement
    return is_complete(step.out)
