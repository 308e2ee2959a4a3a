"""`lmcompress distill` (task-specific): a fine-tuned teacher's logits, hidden states, attention maps and
self-attention relations teach a smaller student. The stage loads the models and rows, runs the library call
(`distillation.train.distill_model`) in a run directory, then scores the student and writes its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import transformers

from ..config import DataConfig, DistillConfig, to_dict
from ..data import load_task
from ..data.ner import TOKEN_TASK
from ..data.qa import QA_TASK
from ..data.tokenize import collator, first_misaligned_row, tokenize_frame
from ..distillation.augment import (SPAN_SHARE, EmbeddingNeighbours, corpus_texts, held_out_texts, without_held_out,
                                   word_replaced_texts, word_spans)
from ..distillation.cache import TeacherCache, teacher_cache_root, teacher_fingerprint
from ..distillation.components import POSITIONAL_LOSSES, TEACHER_PREFIX, Needs, PairedCollator, intermediate_needs, \
    parse_layer_map, teacher_compute_precision
from ..distillation.sharding import shard_teacher
from ..distillation.task_loss import UNLABELLED, uses_labels_only
from ..distillation.train import DistillSettings, Evaluation, distill_model
from ..distributed import num_processes, on_every_process
from ..errors import LmcError
from ..models import presets
from ..models.families import check_max_length
from ..models.heads import task_head
from ..models.hub import is_hub_id, resolve_hub_id
from ..models.load import load_for_sequence_classification, load_tokenizer, load_trained_classifier, resolve
from ..runkinds.task import MAIN_METRIC, finish_run, score_split
from ..runs.manifest import PruningRecord, data_config_for, read_manifest, run_manifest
from ..runs.rundir import RunDir, initial_scores
from ..surgery.albert import albert_from_bert, parse_albert_spec
from ..surgery.student import (build_student, donor_of, is_derived_spec, layer_count, load_student_like, model_width,
                                parse_spec)
from ..training import BatchOrder
from .distill_static import distill_static, is_static_spec

log = logging.getLogger("lmcompress")


@dataclass
class Teacher:
    """The fine-tuned teacher as loaded: its model, folder, tokenizer and (when named by Hub id) Hub record."""

    model: Any
    folder: Path
    tokenizer: Any
    hub: dict[str, str] | None = None


@dataclass
class Student:
    """The student before training, with its tokenizer and the teacher layers its layers are copies of (if any)."""

    model: Any
    tokenizer: Any
    copied: list[int] | None = None


@dataclass
class Provenance:
    """How the run names itself in lmcompress.json: the stage (prune's recovery distils too), the options that let a
    re-run recognise its interrupted run, and what that stage records besides."""

    stage: str = "distill"
    request: dict[str, Any] | None = None
    pruning: PruningRecord | None = None
    records: dict[str, Any] = field(default_factory=dict)


def distill(cfg: DistillConfig, batch_order: BatchOrder | None = None) -> dict[str, Any]:
    """`batch_order` replaces the shuffled order of the training rows (see training.samplers.BatchOrder)."""
    run = RunDir(cfg.out)
    request = to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    teacher, task_data, data_cfg = _load_teacher(cfg)
    if is_static_spec(cfg.student):
        return distill_static(cfg, run, request, teacher.model, teacher.folder, teacher.tokenizer, task_data,
                              data_cfg)
    student = _make_student(cfg, teacher, task_data)
    return distill_into_run(cfg, run, teacher, student, task_data, data_cfg, Provenance(request=request),
                            batch_order)


def _load_teacher(cfg: DistillConfig) -> tuple[Teacher, Any, DataConfig]:
    """The teacher run, and the task data read with its data options (those `cfg.data` leaves unset)."""
    teacher_dir, teacher_hub = _teacher_dir(cfg.teacher)
    data_cfg = data_config_for(cfg.data, teacher_dir)
    task_data = load_task(data_cfg)
    model = load_trained_classifier(teacher_dir, task_data.labels, task_data.task == "regression",
                                    task_data.task).eval()
    check_max_length(model.config, data_cfg.max_length)
    return Teacher(model, teacher_dir, load_tokenizer(teacher_dir), teacher_hub), task_data, data_cfg


def distill_into_run(cfg: DistillConfig, run: RunDir, teacher: Teacher, student: Student, task_data,
                     data_cfg: DataConfig, provenance: Provenance, batch_order: BatchOrder | None = None) -> dict[str, Any]:
    """Distil `student` from `teacher` (`distillation.train.distill_model`) into the run directory `run` (already
    checked: `cfg.resume` says whether it continues), then score it and write its manifest -> metrics.json's payload."""
    check_max_length(student.model.config, data_cfg.max_length)
    layer_map = parse_layer_map(cfg.loss.layer_map, layer_count(student.model.config),
                                layer_count(teacher.model.config), student.copied)
    needs = intermediate_needs(student.model, teacher.model, cfg.loss, layer_map)
    _check_vocabularies(cfg, task_data, needs, student.tokenizer, teacher.tokenizer)
    log.info("student: %s layers (teacher layers %s), width %d, %s params vs teacher %s",
             layer_count(student.model.config), layer_map, model_width(student.model.config),
             f"{sum(p.numel() for p in student.model.parameters()):,}",
             f"{sum(p.numel() for p in teacher.model.parameters()):,}")
    run.begin(cfg.overwrite, cfg.resume, provenance.request)
    max_len, batch_size = data_cfg.max_length, cfg.train.eval_batch_size
    with run.guard():
        transformers.set_seed(cfg.train.seed)  # augmentation draws the same words whatever ran before
        train_set, teacher_ids, collate, augment_record = _training_rows(cfg, task_data, max_len, teacher.model,
                                                                         teacher.tokenizer, student.tokenizer,
                                                                         needs.positional)
        sharding = shard_teacher(teacher.model) if cfg.fsdp else None  # after augmentation read its embeddings whole
        cache = _teacher_cache(cfg, teacher.model, teacher.folder, teacher_ids, needs, task_data.task)
        evaluation = Evaluation(lambda model: score_split(model, student.tokenizer, task_data, "validation", max_len,
                                                          batch_size), MAIN_METRIC[task_data.task])
        # what the student's origin gave it (a cut keeps some of the task; a donor's new head starts at chance)
        start = initial_scores(run.partial, cfg.resume, lambda: evaluation.score(student.model))
        result = distill_model(
            teacher.model, student.model, train_set, collate,
            DistillSettings(cfg.loss, cfg.train, task_data.task, cfg.teacher_precision, cfg.intermediate_epochs),
            layer_map=layer_map, evaluation=evaluation, cache=cache, teacher_ids=teacher_ids, folder=run.partial,
            resume=cfg.resume, batch_order=batch_order, description=f"distill {Path(cfg.out).name}")
        cache_stats = cache.stats() if cache is not None else None  # on every rank: it sums their counts
        metrics = finish_run(
            run, result.student, student.tokenizer, task_data, max_len, batch_size,
            lambda: run_manifest(
                provenance.stage, str(teacher.folder), to_dict(cfg) | {"data": to_dict(data_cfg)}, task_data,
                result.fit, start=start, student={"spec": cfg.student, "teacher_layers_copied": student.copied,
                                     "layer_map": layer_map, "layers": layer_count(result.student.config),
                                     "hidden": model_width(result.student.config)},
                teacher_cache=cache_stats, processes=num_processes(), teacher_sharding=sharding,
                augmentation=augment_record, teacher_hub=teacher.hub, pruning=provenance.pruning,
                **provenance.records),
            wall_time_s=round(result.fit.wall_time_s, 1))
    if cache_stats is not None:
        log.info("teacher cache: %d hits, %d misses", cache_stats["hits"], cache_stats["misses"])
    return metrics


def _check_vocabularies(cfg: DistillConfig, task_data, needs: Needs, student_tokenizer, tokenizer) -> None:
    """A student with its own tokenizer learns on sequence tasks only, from logits (and the position-by-position
    losses when its pieces line up with the teacher's, checked on the rows); TinyBERT's two stages need an
    intermediate loss."""
    intermediate = bool(needs.hidden or needs.attentions or needs.qkv)
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        if task_data.task in (TOKEN_TASK, QA_TASK):  # logits per token, not per sequence
            raise LmcError(f"the student's tokenizer differs from the teacher's; {task_data.task} compares the two "
                           "models position by position on the same sub-tokens, so the student must share the "
                           "teacher's tokenizer (a preset or a spec derived from the teacher does)")
        log.info("the student has its own tokenizer (%d tokens vs the teacher's %d): each side tokenises the raw "
                 "text itself%s", len(student_tokenizer), len(tokenizer),
                 "; the position-by-position losses need both to cut every training text into the same pieces"
                 if needs.positional else "")
    if cfg.intermediate_epochs > 0 and not intermediate:
        raise LmcError("--intermediate-epochs (TinyBERT two-stage) trains the intermediate layers first: give "
                       "--hidden-weight, --attention-weight, --embedding-weight, --minilm-weight or --pooled-weight")


def _check_positions_align(train_frame: pd.DataFrame, student_ids, teacher_ids, student_tokenizer, tokenizer) -> None:
    """The hidden-state, embedding, cosine, attention and MiniLM losses compare position i of one model with position
    i of the other: both tokenizers must pad on the same side and cut every row into the same pieces."""
    if student_tokenizer.padding_side != tokenizer.padding_side:
        why = (f"the student's tokenizer pads on the {student_tokenizer.padding_side}, the teacher's on the "
               f"{tokenizer.padding_side}")
    else:
        row = first_misaligned_row(student_tokenizer, tokenizer, student_ids, teacher_ids)
        if row is None:
            log.info("the two tokenizers cut all %d training rows into the same pieces: positions line up",
                     len(student_ids))
            return
        pair = f" + {str(train_frame['text_pair'].iloc[row])[:30]!r}" if "text_pair" in train_frame else ""
        why = (f"the student's tokenizer cuts training row {row} ({str(train_frame['text'].iloc[row])[:60]!r}{pair}) "
               "into other pieces than the teacher's")
    flags = ", ".join(f"--{name}-weight" for name in POSITIONAL_LOSSES)
    raise LmcError(f"{why}, so their token positions do not line up: only logit KD, hard labels and --pooled-weight "
                   f"work across these vocabularies (drop {flags}), or give a student that shares the teacher's "
                   "tokenizer (a preset or a spec derived from the teacher does)")


def _training_rows(cfg: DistillConfig, task_data, max_len: int, teacher, tokenizer, student_tokenizer,
                   positional: bool):
    """The training split (plus augmentation rows) tokenised for the student, and for the teacher too when it has
    another vocabulary (TEACHER_PREFIX columns; with `positional` losses, checked to line up token by token) ->
    (rows, the teacher's token ids per row, collate, augmentation record)."""
    train_frame, augment_record = task_data.splits["train"], None
    if cfg.augment or cfg.augment_replace or cfg.augment_spans:
        extra_rows, augment_record = augmentation_rows(cfg, task_data, teacher, tokenizer)
        train_frame = pd.concat([train_frame, extra_rows], ignore_index=True)
    train_set = tokenize_frame(train_frame, student_tokenizer, max_len, task_data.qa_options)
    train_set = train_set.add_column("idx", list(range(len(train_set))))
    if student_tokenizer.get_vocab() == tokenizer.get_vocab():
        return train_set, train_set["input_ids"], collator(student_tokenizer), augment_record
    teacher_set = tokenize_frame(train_frame, tokenizer, max_len).remove_columns("labels")
    if positional:
        _check_positions_align(train_frame, train_set["input_ids"], teacher_set["input_ids"], student_tokenizer,
                               tokenizer)
    for column in teacher_set.column_names:
        train_set = train_set.add_column(TEACHER_PREFIX + column, teacher_set[column])
    return train_set, teacher_set["input_ids"], PairedCollator(student_tokenizer, tokenizer), augment_record


def _teacher_cache(cfg: DistillConfig, teacher, teacher_dir: Path, teacher_ids, needs: Needs,
                   task: str) -> TeacherCache | None:
    """The cache of the teacher's logits and hidden states (None when off, or when the losses read attention maps
    or Q/K/V, which are not cached)."""
    if not cfg.cache or uses_labels_only(cfg.loss, needs):  # (labels only: the teacher never runs)
        return None
    if needs.attentions or needs.qkv:
        log.info("teacher cache off: attention maps and Q/K/V relations are computed live")
        return None
    return on_every_process(lambda: TeacherCache(
        teacher_cache_root(cfg.cache_dir), teacher_fingerprint(teacher_dir), teacher_ids,
        teacher.config.num_labels, needs.hidden, model_width(teacher.config),
        per_token=task in (TOKEN_TASK, QA_TASK), precision=teacher_compute_precision(cfg.teacher_precision)))


def augmentation_rows(cfg: DistillConfig, task_data, teacher, tokenizer) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Texts for the teacher to label, label UNLABELLED (the hard-label loss skips them, logit KD does not): the
    documents of --augment, then --augment-replace word-replaced variants and --augment-spans word spans of the
    training texts. Texts equal to a validation or test row are dropped so nothing held out leaks in. -> (rows, record
    for lmcompress.json)"""
    if task_data.task != "classification" or task_data.has_pair:
        raise LmcError("--augment / --augment-replace / --augment-spans add single texts to a sequence-classification "
                       f"task; this task is {'a pair task' if task_data.has_pair else 'a ' + task_data.task}")
    texts, record = [], {}
    if cfg.augment:
        texts += corpus_texts(cfg.augment)
        record["source"] = cfg.augment
    if cfg.augment_replace:
        neighbours = EmbeddingNeighbours(tokenizer, teacher.get_input_embeddings().weight)
        variants = word_replaced_texts(task_data.splits["train"]["text"].tolist(), neighbours, cfg.augment_replace,
                                       cfg.augment_replace_prob, cfg.train.seed)
        texts += variants
        record["word_replacement"] = {"variants_per_text": cfg.augment_replace, "probability": cfg.augment_replace_prob,
                                      "neighbours": f"{neighbours.k} nearest of {len(neighbours.words)} whole-word "
                                                    "tokens in the teacher's input embeddings", "rows": len(variants)}
    if cfg.augment_spans:
        spans = word_spans(task_data.splits["train"]["text"].tolist(), cfg.augment_spans, cfg.train.seed)
        texts += spans
        record["word_spans"] = {"spans_per_text": cfg.augment_spans, "share_of_words": list(SPAN_SHARE),
                                "rows": len(spans)}
    kept, dropped = without_held_out(texts, held_out_texts(task_data))
    kept = kept[:cfg.max_augment_rows] if cfg.max_augment_rows else kept
    if not kept:
        raise LmcError("the augmentation gives no texts outside the validation and test rows")
    record["rows"] = len(kept)
    log.info("augmentation: %d unlabelled rows for the teacher to label (%d equal to held-out rows dropped)",
             len(kept), dropped)
    return pd.DataFrame({"text": kept, "label": [UNLABELLED] * len(kept)}), record


def _teacher_dir(spec: str) -> tuple[Path, dict[str, str] | None]:
    """The teacher's folder: a run directory, a checkpoint folder or a Hub id (-> its snapshot and record)."""
    if is_hub_id(spec):
        return resolve_hub_id(spec, "--teacher")
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        hint = " (fine-tune it first: lmcompress finetune --model NAME --data D --out runs/teacher)" \
            if not path.exists() else ""
        raise LmcError(f"--teacher {spec} is not a fine-tuned run or Hugging Face checkpoint{hint}")
    return path, None


def _make_student(cfg: DistillConfig, teacher: Teacher, task_data) -> Student:
    albert = parse_albert_spec(cfg.student)
    if albert is not None:
        model, copied = albert_from_bert(teacher.model, albert)
        return Student(model, teacher.tokenizer, copied)
    if is_derived_spec(cfg.student):
        donor, items = donor_of(cfg.student)
        if donor is None:
            model, copied = build_student(teacher.model, parse_spec(cfg.student))
            return Student(model, teacher.tokenizer, copied)
        if presets.names_preset(donor):
            raise LmcError(f"--student {cfg.student}: {donor} is a preset (random weights); a cut needs a pre-trained "
                           "donor (a zoo name, folder or Hub id); give the preset with its own shape instead")
        source = resolve(donor, role="student")  # a pre-trained donor, cut: its layers are not the teacher's
        model, _ = build_student(load_student_like(teacher.model, source.path), parse_spec(items), f"donor {donor}")
        return Student(model, load_tokenizer(source.tokenizer_path))
    if presets.names_preset(cfg.student):
        source = resolve(cfg.student, tokenizer=str(teacher.folder), role="student")
        model = load_for_sequence_classification(source, teacher.tokenizer, task_data.num_labels, task_data.labels,
                                                 task_data.task == "regression", cfg.train.seed,
                                                 head=task_head(task_data.task))
        return Student(model, teacher.tokenizer)
    source = resolve(cfg.student, role="student")
    model = load_student_like(teacher.model, source.path)
    copied = layers_cut_from(source.path, teacher.folder, layer_count(teacher.model.config))
    if copied is not None and len(copied) != layer_count(model.config):
        copied = None
    return Student(model, load_tokenizer(source.tokenizer_path), copied)


def layers_cut_from(folder: Path, teacher_dir: Path, n_teacher: int) -> list[int] | None:
    """The teacher layers a student folder's layers are copies of, when it was cut from this very teacher (a
    prune run keeps whole layers of its parent; a distill run records what its student copied), so the hidden-state
    loss pairs each layer with the one it came from instead of spacing them evenly. None for anything else."""
    kept = read_manifest(folder).layers_kept_from(teacher_dir)
    return kept if kept and all(0 <= i < n_teacher for i in kept) else None
