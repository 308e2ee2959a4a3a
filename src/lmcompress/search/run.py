"""`lmcompress auto`: the user states the target (retention and speed); the search finds the model.

1. Measure (minutes): every shape of a grid cut from the teacher, with random weights, timed beside the teacher on
   this machine and backend, fp32 and int8 (shapes.py). Shapes that meet the speed target with a margin remain.
2. The static student first (and the teacher's own int8): minutes each, no screening; when the static student keeps
   the retention, nothing slower is screened or trained.
   Screen: the biggest remaining shape of each depth (the one most likely to keep the accuracy), cut from the
   teacher by pruning importance (`prune --recovery none`; evenly spaced layers for families that cannot be narrowed),
   then distilled for one epoch on a slice of the training rows; ranked by validation score.
3. Train in that order with the chain that worked best by hand (distillation with hidden-state loss and the teacher
   cache, batches grouped by length as distill does by default, then int8 for the backend), until a candidate keeps
   the retention on validation rows and no faster candidate is left, or the time budget is spent. If none keeps it,
   the time left goes to the nearest miss: another round of distillation from its last student (half the learning
   rate), while rounds keep improving it.
   Every step is an ordinary run directory under OUT/candidates/SHAPE/, so re-running the same command continues
   where it stopped.
4. Compare the trained candidates with the teacher in one report; the chosen model is the fastest measured fast
   enough there that keeps the retention on the validation rows, copied to OUT/best.

Every decision (ranking, stopping, the choice) uses the validation rows; the test rows only report.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..backends import load_run_model
from ..backends.onnx import require_onnx
from ..backends.openvino import require_openvino
from ..backends.serving import installed, run_backend
from ..config import AutoConfig, CompareConfig, distill_training, to_dict
from ..data import load_task
from ..data.tokenize import fixed_batch
from ..distillation.augment import corpus_texts, held_out_texts, without_held_out, word_spans
from ..errors import LmcError
from ..machine import processor
from ..models.families import check_max_length, family_of
from ..models.load import load_tokenizer, load_trained_classifier
from ..pipeline import run_recipe
from ..runs.files import hold_output, release_output, write_json_atomic
from ..runs.manifest import TrainingRecord, data_config_for, is_complete, read_manifest
from ..runs.rundir import differing_keys
from ..stages import STAGES
from ..timing import interleaved_rounds, torch_threads
from . import summary
from .donors import find_donors
from .state import LOG_FILE, Candidate, Search, Status, round_step
from .shapes import SPEED_MARGIN, Shape, SpeedTarget, measure_shapes, shape_grid, speedups

log = logging.getLogger("lmcompress")

STATIC_EPOCHS = 10.0
AUGMENT_FILE = "augmentation.json"  # the amount of --augment text, decided once per search (resumes keep it)
AUGMENT_SHARE = 0.5  # of the time left after screening, what the first round of every candidate may take: the rest
# goes to further rounds and the report
REPORT_RESERVE_S = 180.0  # kept back from the budget for the final report
SHAPES_FILE = "shapes.json"
REQUEST_FILE = "request.json"
# the static student: model2vec's table (every vocabulary token, about 3 tokens long, through the teacher) and the
# teacher's pass over the training rows, both at the teacher's timed pace, then STATIC_EPOCHS of a linear head at
# STATIC_PACE rows/s (debates-2016 on the EPYC-AVX2: 95 s in all, the head at 900 rows/s)
STATIC_TABLE_TOKENS = 3
STATIC_PACE = 500.0
# it goes before the screens whatever the task's size: its cost is about one teacher pass over the training rows,
# which every transformer candidate pays too before its epochs, so a budget without room for it has none for them
QUANTIZE_ESTIMATE_S = 120.0
# options that change what a candidate's steps make: a re-run with other values would mix old and new models
REQUEST_KEYS = ("teacher", "batch_size", "seq_len", "backend", "augment", "augment_spans", "screen_rows", "epochs",
                "learning_rate", "donors", "data")
LOSS = {"temperature": 4.0, "alpha": 0.5, "hidden_weight": 1.0}  # the demo's hand-tuned distillation loss
# a donor with its own tokenizer: logits only (its positions rarely line up with the teacher's, and where they do,
# minilm-l6 under mpnet-base, the hidden-state loss gave no consistent gain: docs/results.md)
LOGITS_LOSS = {"temperature": 4.0, "alpha": 0.5}
MAX_ROUNDS = 5  # training rounds per candidate: the first, and up to four more while the target is missed
# timing a trained candidate beside the teacher: with 3 warm-up calls and 7 rounds the students read 5-30% slower than
# in the final report, which times models already warmed by scoring the test rows
RETIME_WARMUP, RETIME_ROUNDS = 10, 10
LR_DECAY = 0.5  # each further round restarts from the last student at half the previous round's learning rate


def auto(cfg: AutoConfig) -> dict[str, Any]:
    started = time.monotonic()
    search, teacher, task_data = _prepare(cfg, started)
    try:
        return _search(search, teacher, task_data, started)
    finally:
        release_output(search.root)


def _search(search: Search, teacher, task_data, started: float) -> dict[str, Any]:
    cfg = search.cfg
    records = _measure(search, teacher, task_data)
    del teacher  # every stage below loads its own
    search.candidates = shortlist(records, search)
    if not search.candidates:
        raise LmcError(f"no student shape reaches {search.target.describe()} at batch {cfg.batch_size} on this "
                       f"machine with {' or '.join(('fp32',) + int8_variants(cfg.backend))} (fastest measured: "
                       f"{max(r['speedup'] for r in records):.1f}x); relax the speed target")
    search.teacher_validation, search.metric = _validation_score(search, search.teacher_dir,
                                                                 search.root / "teacher-validation")
    if not search.teacher_validation:
        raise LmcError(f"the teacher scores {search.metric} 0 on the validation rows: there is nothing to retain")
    _train(search, unscreened_only=True)  # the static student and the teacher's int8: minutes, and often enough
    _screen(search)
    plan_augmentation(search)
    _train(search)
    _extend(search)
    report = _report(search)
    return summary.hand_back(search, report, records, time.monotonic() - started)


# ------------------------------------------------------------------------------------------------ setting up


def int8_variants(backend: str) -> tuple[str, ...]:
    """The int8 variants timed for `--backend`: auto times those of every runtime installed (ONNX Runtime and
    OpenVINO), since which is fastest depends on the processor; torch serves fp32 only."""
    onnx = installed("onnx", "onnxscript", "onnxruntime")  # as require_onnx
    openvino = onnx and installed("openvino", "nncf")  # converted from ONNX
    if backend == "onnxruntime":
        require_onnx()
    if backend == "openvino":
        require_onnx()
        require_openvino()
    named = {"torch": (), "onnxruntime": ("onnx-int8",), "openvino": ("openvino-int8",)}
    if backend in named:
        return named[backend]
    return (("onnx-int8",) if onnx else ()) + (("openvino-int8",) if openvino else ())


def _teacher(cfg: AutoConfig) -> Path:
    teacher_dir = Path(cfg.teacher).expanduser().resolve()  # absolute: a recipe step could be named like it
    if not (teacher_dir / "config.json").is_file():
        raise LmcError(f"--teacher {cfg.teacher} is not a fine-tuned run (no config.json)")
    if read_manifest(teacher_dir).quantization_method or run_backend(teacher_dir) != "torch":  # an ONNX or OpenVINO run
        raise LmcError(f"--teacher {cfg.teacher} is a quantized run; give the fp32 run it was made from")
    return teacher_dir


def _prepare(cfg: AutoConfig, started: float) -> tuple[Search, Any, Any]:
    """-> (the search, the teacher model, its task data), every refusal made before minutes of work."""
    teacher_dir = _teacher(cfg)
    data = data_config_for(cfg.data, teacher_dir)
    recorded = read_manifest(teacher_dir).data_options
    data.max_length = cfg.seq_len or recorded.get("max_length") or data.max_length  # the teacher's, unless told
    task_data = load_task(data)
    if task_data.task not in ("classification", "regression"):
        raise LmcError(f"auto searches students for classification and regression; {task_data.task} runs can be "
                       "distilled and quantized stage by stage (lmcompress distill / prune / quantize)")
    if cfg.augment and (task_data.task != "classification" or task_data.has_pair):
        raise LmcError("--augment labels extra single texts by the teacher: classification of single texts only")
    teacher = load_trained_classifier(teacher_dir, task_data.labels, task_data.task == "regression")
    config = teacher.config
    family = family_of(config)
    if family is None or family.name in ("gpt2", "llama"):
        raise LmcError(f"auto cuts encoder students from the teacher's layers; {config.model_type} is not supported "
                       "(lmcompress distill into a preset student still works)")
    check_max_length(config, data.max_length, "--seq-len")
    root = _out_folder(cfg, teacher_dir)
    _check_request(cfg, root, data, span_count(cfg, task_data))
    target = SpeedTarget(cfg.min_speedup, cfg.max_latency_ms)
    donors = find_donors(cfg.donors, load_tokenizer(teacher_dir).get_vocab(), config, data.max_length)
    search = Search(cfg, root, teacher_dir, data, family, config, target, started + cfg.budget_s,
                    train_rows=len(task_data.splits["train"]), labels=task_data.labels, task=task_data.task,
                    executor=StageExecutor(), donors={d.label: d for d in donors})
    test = task_data.splits["test"]
    search.sample = (test["text"].tolist()[:64], test["text_pair"].tolist()[:64] if task_data.has_pair else None)
    _count_augmentation(search, task_data)
    return search, teacher, task_data


def span_count(cfg: AutoConfig, task_data) -> int:
    """Word spans per labelled text the teacher labels: --augment-spans, where they apply (no --augment text given,
    single-text classification), else 0."""
    single_text = task_data.task == "classification" and not task_data.has_pair
    return cfg.augment_spans if single_text and not cfg.augment else 0


def _count_augmentation(search: Search, task_data) -> None:
    """The texts the teacher may label beside the labelled rows: --augment's (read now, so a corpus that cannot be
    used is refused before minutes of work), else word spans of the labelled texts on single-text classification.
    The spans are drawn with the distill stage's seed, so those counted here are those its steps label."""
    cfg, spans = search.cfg, span_count(search.cfg, task_data)
    if cfg.augment:
        texts, _ = without_held_out(corpus_texts(cfg.augment), held_out_texts(task_data))
        if not texts:
            raise LmcError(f"--augment {cfg.augment} holds no texts outside the validation and test rows")
        search.augment_source = f"texts of `--augment {cfg.augment}`"
    elif spans:
        drawn = word_spans(task_data.splits["train"]["text"].tolist(), spans, distill_training().seed)
        texts, _ = without_held_out(drawn, held_out_texts(task_data))
        search.augment_source = f"word spans of the labelled texts, up to {spans} per text"
    else:
        return
    search.augment_available = len(texts)


def _out_folder(cfg: AutoConfig, teacher_dir: Path) -> Path:
    """OUT, refused when it holds something other than an auto search (a re-run continues the search in it)."""
    root = Path(cfg.out).expanduser().resolve()
    if root == teacher_dir or root in teacher_dir.parents:
        raise LmcError(f"--out {cfg.out} holds the teacher; choose a folder outside it")
    hold_output(root, f"--out {cfg.out} (an auto search)")  # a second search on OUT stops here, touching nothing
    ours = (root / LOG_FILE).is_file()
    if root.exists() and any(root.iterdir()) and not ours:
        raise LmcError(f"--out {cfg.out} is not empty and holds no auto search; choose another folder")
    if ours and cfg.overwrite:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _check_request(cfg: AutoConfig, root: Path, data, spans: int) -> None:
    """OUT/request.json: the options that shape the candidates (`spans`: the word spans per text actually used). A
    re-run must give the same (else it would mix models trained both ways); the targets and the time budget may
    change."""
    request = {k: v for k, v in to_dict(cfg).items() if k in REQUEST_KEYS} | {"data": to_dict(data),
                                                                             "augment_spans": spans}
    recorded = {k: v for k, v in (_read_json(root / REQUEST_FILE) or {}).items() if k in REQUEST_KEYS} or None
    if recorded is not None:
        recorded.setdefault("donors", "none")  # a search recorded before donors existed had none
        recorded.setdefault("augment_spans", 0)  # ... and before word spans, none
    if recorded is not None and recorded != json.loads(json.dumps(request)):
        changed = differing_keys(recorded, json.loads(json.dumps(request)))
        spans_changed = recorded["augment_spans"] != request["augment_spans"]
        hint = f" (--augment-spans {recorded['augment_spans']} continues it)" if spans_changed else ""
        raise LmcError(f"--out {cfg.out} holds a search made with other options ({', '.join(changed)}){hint}; use "
                       "another --out, or --overwrite to start it over")
    write_json_atomic(root / REQUEST_FILE, request)


# ------------------------------------------------------------------------------------------------ 1. measure


def _measure(search: Search, teacher, task_data) -> list[dict[str, Any]]:
    """Random-weight timings of the shape grid, cached in OUT/shapes.json for the same setup."""
    cfg = search.cfg
    variants = int8_variants(cfg.backend)
    threads = search.threads
    setup = {"teacher": str(search.teacher_dir), "int8_variants": list(variants), "batch_size": cfg.batch_size,
             "seq_len": search.data.max_length, "threads": threads, "processor": processor(),
             "target": search.target.describe(),  # int8 variants are timed for the shapes near the target
             "donors": {label: str(d.folder) for label, d in search.donors.items()}}
    cached = _read_json(search.root / SHAPES_FILE)
    if cached and cached.get("setup") == setup:
        log.info("shape timings: reusing %s (same teacher, backend, batch, threads and processor)", SHAPES_FILE)
        search.teacher_ms = cached["teacher_ms"]
        return cached["shapes"]
    tokenizer = load_tokenizer(search.teacher_dir)
    batch = fixed_batch(*search.sample, tokenizer, search.data.max_length, cfg.batch_size)
    grid = shape_grid(search.family, teacher.config, static=not task_data.has_pair)
    grid += [shape for donor in search.donors.values() for shape in donor.shapes()]
    with torch_threads(threads):
        measured, teacher_ms = measure_shapes(
            teacher.eval(), search.family, grid, batch, len(tokenizer), tokenizer.unk_token_id, variants,
            search.target, donors={label: d.config for label, d in search.donors.items()})
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
    int8, then the fastest int8). Of the teacher's cuts the biggest per depth, the `shortlist` biggest of those; of
    each donor its biggest (whole, else its deepest cut); the static student when it is fast enough. (The teacher's
    own shape in fp32 is the teacher: not a candidate.)"""
    required = search.target.required_speedup(search.teacher_ms) * SPEED_MARGIN
    teacher = search.teacher_shape.name
    fast = [r for r in records if r["speedup"] >= required and not (r["name"] == teacher and r["variant"] == "fp32")
            and r.get("origin", "") in ("", *search.donors)]
    best_per_shape: dict[str, dict[str, Any]] = {}
    for record in sorted(fast, key=lambda r: (r["variant"] != "fp32", -r["speedup"])):
        best_per_shape.setdefault(record["name"], record)
    per_depth: dict[int, dict[str, Any]] = {}
    per_donor: dict[str, dict[str, Any]] = {}
    # among equal parameter counts (an ALBERT teacher's cuts share every weight) the deeper shape first
    for record in sorted(best_per_shape.values(), key=lambda r: (-r["params"], -r["layers"])):
        if record.get("origin"):
            per_donor.setdefault(record["origin"], record)
        elif not record["static"]:
            per_depth.setdefault(record["layers"], record)
    chosen = sorted(per_depth.values(), key=lambda r: (-r["params"], -r["layers"]))[:search.cfg.shortlist]
    chosen += list(per_donor.values())
    chosen += [r for r in best_per_shape.values() if r["static"]]
    return [Candidate(_shape(r), r["variant"], r, search.root / "candidates" / r["name"]) for r in chosen]


def _shape(record: dict[str, Any]) -> Shape:
    return Shape(record["layers"], record["heads"], record["hidden"], record["ffn"], record["static"],
                 record.get("origin", ""))


# ------------------------------------------------------------------------------------------------ 2-3. train


def _init_step(search: Search, shape: Shape) -> dict[str, Any] | None:
    """The student's starting point: pruned from the teacher by importance; None where the distill stage starts
    from the teacher's layers itself (`layers=N`, families that cannot be narrowed)."""
    full = search.teacher_shape
    if not search.family.can_narrow or shape == full or shape.origin:  # (a donor is cut by the distill stage)
        return None
    return {"name": "init", "stage": "prune", "model": str(search.teacher_dir), "layers": shape.layers,
            "heads": 1 - shape.heads / full.heads, "ffn": 1 - shape.ffn / full.ffn, "recovery": "none",
            "data": to_dict(search.data)}


def _steps(search: Search, c: Candidate, rounds: int = 1) -> list[dict[str, Any]]:
    """The candidate's chain as recipe steps: init, screen, student, int8 variant, validation score; then, for
    each further round, student-rN distilled from the previous round's student, its int8 variant and score."""
    cfg, teacher = search.cfg, str(search.teacher_dir)
    data = to_dict(search.data)
    if c.shape == search.teacher_shape:  # the teacher itself, quantized
        return [{"name": c.variant, "stage": "quantize", "model": teacher, "method": c.variant, "data": data},
                _evaluate_step(c.variant)]
    if c.shape.static:
        return [{"name": "student", "stage": "distill", "teacher": teacher, "student": "static", "data": data,
                 "train": {"epochs": STATIC_EPOCHS}}, _evaluate_step("student")]
    init = _init_step(search, c.shape)
    donor = search.donors.get(c.shape.origin)
    first = "init" if init else donor.student_spec(c.shape) if donor else f"layers={c.shape.layers}"
    distill = {"stage": "distill", "teacher": teacher, "loss": LOGITS_LOSS if donor and not donor.same_tokenizer
               else LOSS}
    steps = [init] if init else []
    steps.append(distill | {"name": "screen", "student": first, "data": data | {"max_train_examples": cfg.screen_rows},
                            "train": {"epochs": 1.0, "learning_rate": cfg.learning_rate}})
    for r in range(1, rounds + 1):
        start = round_step("student", r - 1) if r > 1 else first
        student = round_step("student", r)
        augment = {("augment" if cfg.augment else "augment_spans"): cfg.augment or cfg.augment_spans,
                   "max_augment_rows": search.augment_rows} if search.augment_rows else {}  # (spans: the seed's own)
        steps.append(distill | augment | {"name": student, "student": start, "data": data,
                                          "train": {"epochs": cfg.epochs,
                                                    "learning_rate": cfg.learning_rate * LR_DECAY ** (r - 1)}})
        if c.variant != "fp32":
            steps.append({"name": round_step(c.variant, r), "stage": "quantize", "model": student,
                          "method": c.variant, "data": data})
        steps.append(_evaluate_step(round_step("student" if c.variant == "fp32" else c.variant, r), r))
    return steps


def _evaluate_step(model_step: str, round_: int = 1) -> dict[str, Any]:
    return {"name": round_step("validation", round_), "stage": "evaluate", "model": model_step,
            "split": "validation", "latency": False}


def _run(search: Search, c: Candidate, only: list[str], rounds: int = 1) -> None:
    run_recipe({"name": c.name, "steps": _steps(search, c, rounds)}, out=str(c.folder), only=only)


def _validation_score(search: Search, model: Path, out: Path) -> tuple[float, str]:
    """The run's main metric on the validation rows (written to `out`)."""
    cfg = STAGES["evaluate"].config(model=str(model), split="validation", out=str(out), latency=False,
                                    data=search.data)
    payload = STAGES["evaluate"].run(cfg)
    return _main_score(payload), payload["main_metric"]


def _main_score(payload: dict[str, Any]) -> float:
    """The main metric of a metrics.json payload."""
    return payload["metrics"][payload["main_metric"]]


def best_score(training: TrainingRecord | None, metric: str) -> float | None:
    """The best validation score of a distill run's evaluations."""
    history = training.history if training else []
    return max((h[metric] for h in history if metric in h), default=None)


def pace(training: TrainingRecord | None) -> float:
    """Training examples per second of a finished run (1.0 when it records none)."""
    return (training.examples_per_s if training else 0.0) or 1.0


def _screen(search: Search) -> None:
    """A short distillation of every shortlisted shape -> candidates ordered by validation retention, best first.
    The static student and the teacher's int8 have no screening: they are cheap to make in full, and go first."""
    met = _fastest_met(search)
    for i, c in enumerate(search.candidates, start=1):
        if not _needs_screen(search, c):  # (made, or closed, before the screens)
            continue
        if met is not None and c.predicted["speedup"] <= met:
            c.close("not screened: a faster candidate already met the target")
            continue
        names = [s["name"] for s in _steps(search, c)]
        if not search.executor.made(search, c, "screen"):
            if search.left_s() < REPORT_RESERVE_S:
                c.close("not screened: time budget spent")
                continue
            if not _attempt(search, c, [n for n in ("init", "screen") if n in names]):
                continue
        training = search.executor.training(search, c, "screen")
        score = best_score(training, search.metric)
        c.screen_score = score / search.teacher_validation if score is not None else None
        start = (training.start or {}).get(search.metric) if training else None
        c.start_score = start / search.teacher_validation if start is not None else None
        c.pace = pace(training)
        c.status = Status.SCREENED
        log.info("screen %d/%d %s: predicted %.1fx, validation retention after 1 epoch on %d rows %.1f%%, %.0f min "
                 "left", i, len(search.candidates), c.name, c.predicted["speedup"],
                 min(search.cfg.screen_rows, search.train_rows or search.cfg.screen_rows),
                 100 * (c.screen_score or 0), search.left_s() / 60)
        search.event("screened", **c.record())
    search.candidates.sort(key=_training_order)


def _needs_screen(search: Search, c: Candidate) -> bool:
    """Whether `c` is screened before being trained: the static student and the teacher's own int8 are not."""
    return not (c.shape.static or c.shape == search.teacher_shape)


def _fastest_met(search: Search) -> float | None:
    """The predicted speedup of the fastest candidate that met the target so far (None: none did)."""
    return max((c.predicted["speedup"] for c in search.candidates if c.status is Status.MET), default=None)


def _training_order(c: Candidate) -> float:
    """Cheap candidates without screening first (already trained, then not), then best screened first; closed ones
    (failed, out of time) last."""
    if c.status is Status.TRAINED or c.status is Status.MET:
        return -3.0
    if c.status is Status.PLANNED or c.status is Status.SCREENED and c.screen_score is None:
        return -2.0
    return -(c.screen_score or -1.0) if c.status is Status.SCREENED else 1.0


def _attempt(search: Search, c: Candidate, only: list[str], rounds: int = 1) -> bool:
    """Make steps of one candidate; a failure (NaN loss, an export the runtime refuses...) closes this candidate only
    (one that fails an extra round keeps its best round)."""
    failure = search.executor.run(search, c, only, rounds)
    if failure is None:
        return True
    what = "failed" if rounds == 1 else f"round {rounds} failed"
    c.close(f"{what}: {failure}")
    log.warning("%s %s: %s", c.name, what, failure)
    search.event("failed", **c.record())
    return False


class StageExecutor:
    """Makes candidates through the stages: each as a recipe in its folder (finished steps are kept)."""

    def run(self, search: Search, c: Candidate, steps: list[str], rounds: int) -> str | None:
        try:
            _run(search, c, steps, rounds)
            return None
        except LmcError as exc:
            return str(exc)

    def made(self, search: Search, c: Candidate, step: str) -> bool:
        folder = c.folder / step
        return is_complete(folder) or (folder / "metrics.json").is_file()  # evaluate writes no manifest

    def training(self, search: Search, c: Candidate, step: str) -> TrainingRecord | None:
        return read_manifest(c.folder / step).train

    def round_retention(self, search: Search, c: Candidate, round_: int) -> float:
        score = json.loads((c.folder / round_step("validation", round_) / "metrics.json").read_text(encoding="utf-8"))
        return _main_score(score) / search.teacher_validation


def estimate_s(search: Search, c: Candidate) -> float:
    """Seconds to make `c` in full: a screened candidate's screening pace (examples per second) over the training
    rows, plus the teacher's pass over them (its timed batch latency); the static student's by `_static_s`; the
    teacher's int8 a quantization."""
    if c.shape.static:
        return _static_s(search)
    if c.shape == search.teacher_shape:
        return QUANTIZE_ESTIMATE_S
    return _training_s(search, search.rows_seen, c.pace) + _teacher_s(search, search.rows_seen) + QUANTIZE_ESTIMATE_S


def _static_s(search: Search) -> float:
    """Seconds to make the static student, with 20% slack: it grows with the task's rows and the teacher's pace (a
    fixed figure was several times what a small task's static student takes)."""
    table_rows = search.teacher_config.vocab_size * STATIC_TABLE_TOKENS / search.data.max_length
    teacher_s = _teacher_s(search, table_rows + search.train_rows)
    return 1.2 * (teacher_s + STATIC_EPOCHS * search.train_rows / STATIC_PACE)


def round_estimate_s(search: Search, c: Candidate) -> float:
    """Seconds for one more round: the last round's training pace over the rows (teacher outputs are cached)."""
    return _training_s(search, search.rows_seen, c.pace) + QUANTIZE_ESTIMATE_S


def _training_s(search: Search, rows: float, pace: float | None) -> float:
    """Seconds to train on `rows` for --epochs at `pace` examples per second (1 when never timed), with 20% slack."""
    return 1.2 * search.cfg.epochs * rows / (pace or 1.0)


def _teacher_s(search: Search, rows: float) -> float:
    """Seconds of the teacher's pass over `rows`, from its timed batch latency."""
    return rows * search.teacher_ms / 1000 / search.cfg.batch_size


def augmentation_amount(available: int, search: Search, paces: list[float], seconds: float) -> int:
    """The most --augment rows (at most `available`) with which the first round of every candidate of `paces`
    (training examples per second, from its screen) over the labelled rows and them, plus the teacher's one pass
    over them (its outputs are cached for every student), fits in `seconds`."""
    if not paces:  # no transformer student to train: the static student and the teacher's int8 see no augmentation
        return 0
    per_row = sum(_training_s(search, 1, p) for p in paces) + _teacher_s(search, 1)  # every candidate, one row
    fixed = search.train_rows * per_row + QUANTIZE_ESTIMATE_S * len(paces)
    return max(0, min(available, int((seconds - fixed) / per_row)))


def plan_augmentation(search: Search) -> None:
    """How many augmentation texts every trained student sees beside the labelled rows: as many as fit in
    AUGMENT_SHARE of the time left, by the screens' measured pace and the teacher's timed latency. Kept in
    OUT/augmentation.json once a student has started training with it, so a re-run makes the same steps; until then a
    re-run (a larger --time-budget) plans again."""
    if not search.augment_available:
        return
    path = search.root / AUGMENT_FILE
    if path.is_file() and any(_student_started(c) for c in search.candidates if _needs_screen(search, c)):
        search.augment_rows = min(json.loads(path.read_text(encoding="utf-8"))["rows"], search.augment_available)
        return
    paces = [c.pace for c in search.candidates if c.status is Status.SCREENED]  # transformer students
    seconds = AUGMENT_SHARE * (search.left_s() - REPORT_RESERVE_S)
    search.augment_rows = augmentation_amount(search.augment_available, search, paces, seconds)
    record = {"source": search.augment_source, "available": search.augment_available, "rows": search.augment_rows,
              "labelled_rows": search.train_rows, "candidates": len(paces), "seconds": round(seconds),
              "teacher_ms": search.teacher_ms}
    write_json_atomic(path, record)
    search.event("augmentation", **record)
    log.info("augmentation: %d of %d texts (%s) labelled by the teacher for each student, beside the %d labelled rows "
             "(what fits in %.0f min for %d candidates at their screened pace)", search.augment_rows,
             search.augment_available, search.augment_source, search.train_rows, seconds / 60, len(paces))


def _student_started(c: Candidate) -> bool:
    """Whether `c`'s first training round was begun (finished, or its partial folder left by an interruption)."""
    return (c.folder / "student").exists() or (c.folder / ".student.partial").exists()


def _train(search: Search, unscreened_only: bool = False) -> None:
    """Train candidates in order (the unscreened ones, then best-screened first); once one keeps the retention on
    validation, only faster ones follow. `unscreened_only`: the static student and the teacher's int8 alone, made
    before any screening (they take minutes, the static student is the fastest of all, and it has met targets alone)."""
    fastest_met = _fastest_met(search)
    # the first pass goes fastest first: the static student, then the teacher's int8 (needless once it meets)
    order = sorted(search.candidates, key=lambda c: -c.predicted["speedup"]) if unscreened_only else search.candidates
    for i, c in enumerate(order, start=1):
        if c.status in (Status.CLOSED, Status.TRAINED, Status.MET):  # failed, not screened, or made already
            continue
        if unscreened_only and _needs_screen(search, c):
            continue
        if fastest_met is not None and c.predicted["speedup"] <= fastest_met:
            c.close("not trained: a faster candidate already met the target")
            continue
        need = 0.0 if search.executor.made(search, c, c.deploy.name) else estimate_s(search, c)
        if need > search.left_s() - REPORT_RESERVE_S:
            c.close(f"not trained: needs about {need / 60:.0f} min, {search.left_s() / 60:.0f} min left")
            log.info("candidate %d/%d %s: %s", i, len(search.candidates), c.name, c.reason)
            continue
        if not _attempt(search, c, [s["name"] for s in _steps(search, c) if s["name"] not in ("init", "screen")]):
            continue
        c.validation_retention = search.executor.round_retention(search, c, 1)
        try:
            c.measured = _retime(search, c)
        except LmcError as exc:  # the final report times it again; a timing failure ends no candidate
            log.warning("%s: not timed as trained: %s", c.name, exc)
        measured = c.measured or {"speedup": float("nan"), "latency_ms": float("nan")}
        log.info("candidate %d/%d %s: predicted %.1fx (%.1f ms), measured %.1fx (%.1f ms) as trained%s, validation "
                 "retention %.1f%%, %.0f min left", i, len(search.candidates), c.name, c.predicted["speedup"],
                 c.predicted["latency_ms"], measured["speedup"], measured["latency_ms"],
                 "" if search.fast_as_trained(c, SPEED_MARGIN) else " (misses the target: no further rounds)",
                 100 * c.validation_retention, search.left_s() / 60)
        c.status = Status.MET if search.meets_target(c) else Status.TRAINED
        search.event("trained", **c.record())
        if c.status is Status.MET:
            fastest_met = max(fastest_met or 0.0, c.predicted["speedup"])


def _retime(search: Search, c: Candidate) -> dict[str, Any]:
    """`c`'s trained model on its own runtime, timed beside the teacher (PyTorch fp32) on the shape timings'
    batch, interleaved: the random-weight prediction ran up to 1.36x slow for the smallest int8 shapes, so rounds are
    spent only on candidates not measured too slow (the final report times everything again)."""
    threads = search.threads
    calls = {}
    for key, folder in (("teacher", search.teacher_dir), ("student", c.deploy)):
        model = load_run_model(folder, search.labels, search.task == "regression", threads, task=search.task).eval()
        batch = fixed_batch(*search.sample, load_tokenizer(folder), search.data.max_length, search.cfg.batch_size)
        calls[key] = functools.partial(model, **batch)
    with torch_threads(threads):
        times = interleaved_rounds(calls, RETIME_ROUNDS, warmup=RETIME_WARMUP)
    return speedups(times, "teacher")["student"]


def _extend(search: Search) -> None:
    """While no candidate keeps the retention and time is left: train the nearest miss one more round (distilled
    again from its last student), as long as its rounds keep improving it."""
    goal = search.cfg.min_retention
    while not any(search.meets_target(c) for c in search.candidates):
        open_ = [c for c in search.candidates if c.status is Status.TRAINED and c.rounds == c.best_round < MAX_ROUNDS
                 and not c.shape.static and c.shape != search.teacher_shape
                 and search.fast_as_trained(c, SPEED_MARGIN)  # two timings of one model differ by up to 20%
                 and c.validation_retention < goal]  # more rounds cannot make a kept model faster
        if not open_:
            return
        c = max(open_, key=lambda x: x.validation_retention)
        c.pace = pace(search.executor.training(search, c, round_step("student", c.rounds)))  # its latest round's
        need = 0.0 if search.executor.made(search, c, round_step("validation", c.rounds + 1)) else \
            round_estimate_s(search, c)
        if need > search.left_s() - REPORT_RESERVE_S:
            log.info("no further round: %s needs about %.0f min, %.0f min left", c.name, need / 60,
                     search.left_s() / 60)
            return
        r = c.rounds + 1
        names = [round_step(n, r) for n in ("student", c.variant, "validation") if n != "fp32"]
        log.info("round %d of %s (validation retention %.1f%%, %.1f points short): %.0f min left", r, c.name,
                 100 * c.validation_retention, 100 * (goal - c.validation_retention), search.left_s() / 60)
        if not _attempt(search, c, names, r):  # closed: it keeps its best round
            continue
        c.rounds, retention = r, search.executor.round_retention(search, c, r)
        if retention > c.validation_retention:
            c.best_round, c.validation_retention = r, retention
        if search.meets_target(c):
            c.status = Status.MET
        log.info("round %d of %s: validation retention %.1f%% (best %.1f%%, round %d)", r, c.name, 100 * retention,
                 100 * c.validation_retention, c.best_round)
        search.event("round", **c.record(), round_retention=retention)


def _report(search: Search) -> dict[str, Any]:
    """The usual side-by-side report: the teacher and every trained candidate, timed in one process."""
    trained = [c for c in search.candidates if c.trained]
    if not trained:
        raise LmcError(f"the time budget ({search.cfg.time_budget}) ran out before any candidate was trained; "
                       "re-run the same command with a larger --time-budget (finished steps are kept)")
    # rows named after the candidates: their deployed folders share leaf names ("student", "int8")
    cfg = CompareConfig(runs=[str(search.teacher_dir)] + [str(c.deploy) for c in trained],
                        names=",".join(["teacher"] + [c.name for c in trained]),
                        out=str(search.root / "report"), overwrite=True, latency_repeats=10,
                        threads=search.cfg.threads, data=search.data,
                        backends="auto" if search.cfg.backend == "auto" else "run")
    return STAGES["compare"].run(cfg)
