"""`lmcompress auto`: the user states the target (retention and speed); the search finds the model.

1. Measure (minutes): every shape of a grid cut from the teacher, with random weights, timed beside the teacher on
   this machine and backend, fp32 and int8 (shapes.py). Shapes that meet the speed target with a margin remain.
2. Screen: the biggest remaining shape of each depth (the one most likely to keep the accuracy), cut from the
   teacher by pruning importance (`prune --recovery none`; evenly spaced layers for families that cannot be narrowed),
   then distilled for one epoch on a slice of the training rows; ranked by validation score.
3. Train in that order with the chain that worked best by hand (distillation with hidden-state loss and the teacher
   cache, then int8 for the backend), until a candidate keeps the retention on validation rows and no faster
   candidate is left, or the time budget is spent. Every step is an ordinary run directory under
   OUT/candidates/SHAPE/, so re-running the same command continues where it stopped.
4. Compare the trained candidates with the teacher in one report; the chosen model is the fastest that meets both
   targets on the report's test rows, copied to OUT/best.

The search's own decisions (ranking, stopping) use validation rows; the targets are judged on the test rows the
report shows.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..config import AutoConfig, CompareConfig, to_dict
from ..data import load_task
from ..data.tokenize import fixed_batch
from ..errors import LmcError
from ..machine import processor
from ..models.families import family_of
from ..models.load import load_tokenizer, load_trained_classifier
from ..pipeline import run_recipe
from ..runs import data_config_for, read_run_manifest, write_json_atomic
from ..stages import STAGES
from . import summary
from .state import LOG_FILE, Candidate, Search
from .shapes import Shape, SpeedTarget, measure_shapes, shape_grid, teacher_shape

log = logging.getLogger("lmcompress")

SPEED_MARGIN = 1.1  # a random-weight timing must beat the target by this much: trained models measured up to ~10% off
STATIC_EPOCHS = 10.0
REPORT_RESERVE_S = 180.0  # kept back from the budget for the final report
SHAPES_FILE = "shapes.json"
LOSS = {"temperature": 4.0, "alpha": 0.5, "hidden_weight": 1.0}  # the demo's hand-tuned distillation loss


def auto(cfg: AutoConfig) -> dict[str, Any]:
    started = time.monotonic()
    search = _prepare(cfg, started)
    records = _measure(search)
    search.candidates = shortlist(records, search)
    if not search.candidates:
        raise LmcError(f"no student shape reaches {search.target.describe()} at batch {cfg.batch_size} on this "
                       f"machine with the {_backend(cfg.backend)} backend (fastest measured: "
                       f"{max(r['speedup'] for r in records):.1f}x); relax the speed target")
    search.teacher_validation, search.metric = _validation_score(search, search.teacher_dir, search.root / "teacher-validation")
    _screen(search)
    _train(search)
    report = _report(search)
    return summary.hand_back(search, report, records, time.monotonic() - started)


# ------------------------------------------------------------------------------------------------ setting up


def _backend(name: str) -> str:
    if name == "openvino":
        raise LmcError("--backend openvino: lmcompress cannot serve OpenVINO models yet; use onnxruntime or torch")
    if name != "auto":
        return name
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def _prepare(cfg: AutoConfig, started: float) -> Search:
    teacher_dir = Path(cfg.teacher).expanduser()
    if not (teacher_dir / "config.json").is_file():
        raise LmcError(f"--teacher {cfg.teacher} is not a fine-tuned run (no config.json)")
    data = data_config_for(cfg.data, teacher_dir)
    recorded = ((read_run_manifest(teacher_dir) or {}).get("config") or {}).get("data") or {}
    data.max_length = cfg.seq_len or recorded.get("max_length") or data.max_length  # the teacher's, unless told
    task_data = load_task(data)
    if task_data.task not in ("classification", "regression"):
        raise LmcError(f"auto searches students for classification and regression; {task_data.task} runs can be "
                       "distilled and quantized stage by stage (lmcompress distill / prune / quantize)")
    config = load_trained_classifier(teacher_dir, task_data.labels, task_data.task == "regression").config
    family = family_of(config)
    if family is None or family.shares_layers:
        raise LmcError(f"auto cuts students from the teacher's layers; {config.model_type} has no adapter for that "
                       "(lmcompress distill into a preset student still works)")
    root = _out_folder(cfg)
    target = SpeedTarget(cfg.min_speedup, cfg.max_latency_ms)
    return Search(cfg, root, teacher_dir, data, family, config, target, started + cfg.budget_s)


def _out_folder(cfg: AutoConfig) -> Path:
    """OUT, refused when it holds something other than an auto search (a re-run continues the search in it)."""
    root = Path(cfg.out).expanduser()
    if root.exists() and cfg.overwrite:
        shutil.rmtree(root)
    if root.exists() and any(root.iterdir()) and not (root / LOG_FILE).is_file():
        raise LmcError(f"--out {root} is not empty and holds no auto search; choose another folder")
    root.mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------------------------ 1. measure


def _measure(search: Search) -> list[dict[str, Any]]:
    """Random-weight timings of the shape grid, cached in OUT/shapes.json for the same setup."""
    cfg = search.cfg
    backend = _backend(cfg.backend)
    threads = cfg.threads or torch.get_num_threads()
    setup = {"teacher": str(search.teacher_dir.resolve()), "backend": backend, "batch_size": cfg.batch_size,
             "seq_len": search.data.max_length, "threads": threads, "processor": processor(),
             "target": search.target.describe()}  # int8 variants are timed for the shapes near the target
    cached = _read_json(search.root / SHAPES_FILE)
    if cached and cached.get("setup") == setup:
        log.info("shape timings: reusing %s (same teacher, backend, batch, threads and processor)", SHAPES_FILE)
        search.teacher_ms = cached["teacher_ms"]
        return cached["shapes"]
    task_data = load_task(search.data)
    teacher = load_trained_classifier(search.teacher_dir, task_data.labels, task_data.task == "regression")
    tokenizer = load_tokenizer(search.teacher_dir)
    test = task_data.splits["test"]
    pairs = test["text_pair"].tolist()[:64] if task_data.has_pair else None
    batch = fixed_batch(test["text"].tolist()[:64], pairs, tokenizer, search.data.max_length, cfg.batch_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured, teacher_ms = measure_shapes(
            teacher.eval(), search.family, shape_grid(search.family, teacher.config, static=not task_data.has_pair),
            batch, len(tokenizer), tokenizer.unk_token_id, {"onnxruntime": "onnx-int8", "torch": "dynamic-int8"}[backend],
            search.target)
    finally:
        torch.set_num_threads(previous)
    search.teacher_ms = teacher_ms
    records = [m.record() for m in measured]
    write_json_atomic(search.root / SHAPES_FILE, {"setup": setup, "teacher_ms": teacher_ms, "shapes": records})
    search.event("measured", shapes=len(records), teacher_ms=round(teacher_ms, 3))
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shortlist(records: list[dict[str, Any]], search: Search) -> list[Candidate]:
    """Shapes that meet the target with SPEED_MARGIN, each with its most accurate fast-enough variant (fp32 before
    int8); the biggest per depth, the `shortlist` biggest of those; the static student when it is fast enough.
    (The teacher's own shape in fp32 is the teacher: not a candidate.)"""
    required = search.target.required_speedup(search.teacher_ms) * SPEED_MARGIN
    teacher = teacher_shape(search.family, search.teacher_config).name
    fast = [r for r in records if r["speedup"] >= required and not (r["name"] == teacher and r["variant"] == "fp32")]
    best_per_shape: dict[str, dict[str, Any]] = {}
    for record in sorted(fast, key=lambda r: r["variant"] != "fp32"):
        best_per_shape.setdefault(record["name"], record)
    per_depth: dict[int, dict[str, Any]] = {}
    for record in sorted(best_per_shape.values(), key=lambda r: -r["params"]):
        if not record["static"]:
            per_depth.setdefault(record["layers"], record)
    chosen = sorted(per_depth.values(), key=lambda r: -r["params"])[:search.cfg.shortlist]
    chosen += [r for r in best_per_shape.values() if r["static"]]
    return [Candidate(_shape(r), r["variant"], r, search.root / "candidates" / r["name"]) for r in chosen]


def _shape(record: dict[str, Any]) -> Shape:
    return Shape(record["layers"], record["heads"], record["hidden"], record["ffn"], record["static"])


# ------------------------------------------------------------------------------------------------ 2-3. train


def _init_step(search: Search, shape: Shape) -> dict[str, Any] | None:
    """The student's starting point: pruned from the teacher by importance; None where the distill stage starts
    from the teacher's layers itself (`layers=N`, families that cannot be narrowed)."""
    full = teacher_shape(search.family, search.teacher_config)
    if not search.family.can_narrow or shape == full:
        return None
    return {"name": "init", "stage": "prune", "model": str(search.teacher_dir), "layers": shape.layers,
            "heads": 1 - shape.heads / full.heads, "ffn": 1 - shape.ffn / full.ffn, "recovery": "none",
            "data": to_dict(search.data)}


def _steps(search: Search, c: Candidate) -> list[dict[str, Any]]:
    """The candidate's chain as recipe steps: init, screen, student, int8 variant, validation score."""
    cfg, teacher = search.cfg, str(search.teacher_dir)
    data = to_dict(search.data)
    if c.shape == teacher_shape(search.family, search.teacher_config):  # the teacher itself, quantized
        return [{"name": c.variant, "stage": "quantize", "model": teacher, "method": c.variant, "data": data},
                _evaluate_step(c.variant)]
    if c.shape.static:
        return [{"name": "student", "stage": "distill", "teacher": teacher, "student": "static", "data": data,
                 "train": {"epochs": STATIC_EPOCHS}}, _evaluate_step("student")]
    init = _init_step(search, c.shape)
    student = "init" if init else f"layers={c.shape.layers}"
    distill = {"stage": "distill", "teacher": teacher, "student": student, "loss": LOSS}
    steps = [init] if init else []
    steps.append(distill | {"name": "screen", "data": data | {"max_train_examples": cfg.screen_rows},
                            "train": {"epochs": 1.0, "learning_rate": cfg.learning_rate}})
    steps.append(distill | {"name": "student", "data": data, "augment": cfg.augment,
                            "train": {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate}})
    if c.variant != "fp32":
        steps.append({"name": c.variant, "stage": "quantize", "model": "student", "method": c.variant, "data": data})
    return steps + [_evaluate_step(c.deploy.name)]


def _evaluate_step(model_step: str) -> dict[str, Any]:
    return {"name": "validation", "stage": "evaluate", "model": model_step, "split": "validation", "latency": False}


def _run(search: Search, c: Candidate, only: list[str]) -> None:
    run_recipe({"name": c.name, "steps": _steps(search, c)}, out=str(c.folder), only=only)


def _validation_score(search: Search, model: Path, out: Path) -> tuple[float, str]:
    """The run's main metric on the validation rows (written to `out`)."""
    cfg = STAGES["evaluate"].config(model=str(model), split="validation", out=str(out), latency=False,
                                    data=search.data)
    payload = STAGES["evaluate"].run(cfg)
    return payload["metrics"][payload["main_metric"]], payload["main_metric"]


def _screen_score(folder: Path) -> float | None:
    """The best validation score of a distill run's epochs."""
    train = (read_run_manifest(folder) or {}).get("train") or {}
    history, best = train.get("history") or [], train.get("best_epoch")
    scores = [h for h in history if h.get("epoch") == best] or history[-1:]
    metric = next((k for k in scores[0] if k not in ("epoch", "step")), None) if scores else None
    return scores[0][metric] if metric else None


def _screen(search: Search) -> None:
    """A short distillation of every shortlisted shape (the static student and the teacher's int8 are cheap
    enough to be trained in full instead) -> candidates ordered by validation retention, best first."""
    for i, c in enumerate(search.candidates, start=1):
        names = [s["name"] for s in _steps(search, c)]
        if "screen" not in names:
            continue
        if search.left_s() < REPORT_RESERVE_S:
            c.note = "not screened: time budget spent"
            continue
        _run(search, c, [n for n in ("init", "screen") if n in names])
        score = _screen_score(c.folder / "screen")
        c.screen_score = score / search.teacher_validation if score is not None else None
        log.info("screen %d/%d %s: predicted %.1fx, validation retention after 1 epoch on %d rows %.1f%%, %.0f min "
                 "left", i, len(search.candidates), c.name, c.predicted["speedup"], search.cfg.screen_rows,
                 100 * (c.screen_score or 0), search.left_s() / 60)
        search.event("screened", **c.record())
    search.candidates.sort(key=lambda c: -(c.screen_score if c.screen_score is not None else 2.0))


def _estimate_s(search: Search, c: Candidate) -> float:
    """Seconds to train `c` in full, from its screening run's pace (examples per second, the teacher's pass over
    the screening rows included, so on the safe side); 0 when it is already trained."""
    if c.screen_score is None or (c.deploy / "config.json").is_file():
        return 0.0
    screen = read_run_manifest(c.folder / "screen") or {}
    pace = (screen.get("train") or {}).get("examples_per_s") or 1.0
    rows = ((read_run_manifest(search.teacher_dir) or {}).get("data") or {}).get("sizes", {}).get("train", 0)
    return 1.2 * search.cfg.epochs * rows / pace + 60.0


def _train(search: Search) -> None:
    """Train candidates best-screened first; once one keeps the retention on validation, only faster ones follow."""
    fastest_met: float | None = None
    for i, c in enumerate(search.candidates, start=1):
        if fastest_met is not None and c.predicted["speedup"] <= fastest_met:
            c.note = "not trained: a faster candidate already met the target"
            continue
        need = _estimate_s(search, c)
        if need > search.left_s() - REPORT_RESERVE_S:
            c.note = f"not trained: needs about {need / 60:.0f} min, {search.left_s() / 60:.0f} min left"
            log.info("candidate %d/%d %s: %s", i, len(search.candidates), c.name, c.note)
            continue
        _run(search, c, [s["name"] for s in _steps(search, c) if s["name"] not in ("init", "screen")])
        c.trained = True
        score = json.loads((c.folder / "validation" / "metrics.json").read_text(encoding="utf-8"))
        c.validation_retention = score["metrics"][score["main_metric"]] / search.teacher_validation
        log.info("candidate %d/%d %s: predicted %.1fx (%.1f ms), validation retention %.1f%%, %.0f min left", i,
                 len(search.candidates), c.name, c.predicted["speedup"], c.predicted["latency_ms"],
                 100 * c.validation_retention, search.left_s() / 60)
        search.event("trained", **c.record())
        if c.validation_retention >= search.cfg.min_retention:
            fastest_met = max(fastest_met or 0.0, c.predicted["speedup"])


def _report(search: Search) -> dict[str, Any]:
    """The usual side-by-side report: the teacher and every trained candidate, timed in one process."""
    trained = [c for c in search.candidates if c.trained]
    if not trained:
        raise LmcError(f"the time budget ({search.cfg.time_budget}) ran out before any candidate was trained; "
                       "re-run the same command with a larger --time-budget (finished steps are kept)")
    cfg = CompareConfig(runs=[str(search.teacher_dir)] + [str(c.deploy) for c in trained],
                        out=str(search.root / "report"), overwrite=True, latency_repeats=10,
                        threads=search.cfg.threads, data=search.data)
    return STAGES["compare"].run(cfg)
