"""`lmcompress distill` (task-specific): a fine-tuned teacher's logits, hidden states, attention maps and
self-attention relations teach a smaller student, trained by the shared loop in `lmcompress.train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
import transformers
from torch import nn

from ..config import DistillConfig, to_dict
from ..data import load_task
from ..data.ner import TOKEN_TASK
from ..data.qa import QA_TASK
from ..data.tokenize import collator, tokenize_frame
from ..errors import LmcError
from ..evaluate import MAIN_METRIC, finish_run, score_split
from ..models import presets
from ..models.load import load_for_sequence_classification, load_tokenizer, load_trained_classifier, resolve, task_head
from ..models.outputs import adapt
from ..runs import (RunDir, data_config_for, is_main_process, num_processes, on_all_processes, on_every_process,
                    process_state, run_manifest, wait_for_everyone)
from ..shrink.albert import albert_from_bert, parse_albert_spec
from ..train import fit
from . import losses
from .cache import TeacherCache, default_root, teacher_fingerprint
from .sharding import is_sharded, shard_teacher
from .static import distill_static, is_static_spec
from .student import (build_student, default_layer_map, is_derived_spec, layer_count, load_student_like, model_width,
                      parse_spec)

log = logging.getLogger("lmcompress")
TEACHER_PREFIX = "teacher_"  # batch keys of the teacher's own tokens when the student has another tokenizer
UNLABELLED = -100  # label of augmentation rows: ignored by the hard-label loss
INTERMEDIATE_STAGE = "intermediate-stage"  # TinyBERT stage 1's checkpoints and result, inside the partial run
TARGET_KEYS = ("labels", "start_positions", "end_positions")  # batch keys the teacher must not see


def parse_layer_map(text: str, n_student: int, n_teacher: int, copied: list[int] | None) -> list[int]:
    """Teacher hidden-state index (1..n_teacher) for each student layer 1..n_student."""
    if text == "auto":
        return default_layer_map(copied, n_student, n_teacher)
    if text == "uniform":
        return default_layer_map(None, n_student, n_teacher)
    if text == "last":
        return [n_teacher - n_student + i + 1 for i in range(n_student)]
    mapping: dict[int, int] = {}
    for pair in text.split(","):
        s, sep, t = pair.partition(":")
        try:
            s_i, t_i = int(s), int(t)
        except ValueError:
            raise LmcError(f"layer map '{text}': use auto, uniform, last or pairs like '1:2,2:4'") from None
        if not sep or not 1 <= s_i <= n_student or not 1 <= t_i <= n_teacher:
            raise LmcError(f"layer map pair '{pair}': student layers are 1..{n_student}, teacher layers 1..{n_teacher}")
        mapping[s_i] = t_i
    if sorted(mapping) != list(range(1, n_student + 1)):
        raise LmcError(f"layer map '{text}' must give a teacher layer for every student layer 1..{n_student}")
    return [mapping[i] for i in range(1, n_student + 1)]


class DistillModule(nn.Module):
    """The student plus the learned projections that map its widths onto the teacher's (TinyBERT)."""

    def __init__(self, student: nn.Module, student_width: int, teacher_width: int, n_projections: int):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width) for _ in range(n_projections if student_width != teacher_width else 0))

    def project(self, i: int) -> nn.Module | None:
        return self.projections[i] if len(self.projections) else None


@dataclass
class Needs:
    """What the intermediate losses read from both models."""

    hidden: tuple[int, ...]  # teacher hidden-state indices needed (0 = embeddings)
    attentions: bool
    qkv: bool


def intermediate_needs(student: nn.Module, teacher: nn.Module, loss_cfg, layer_map: list[int]) -> Needs:
    """Check the intermediate losses fit these two models (one clear error each) -> what they need. Switches both
    models to eager attention when attention maps are compared (sdpa returns none)."""
    reads_hidden = loss_cfg.hidden_weight > 0 or loss_cfg.cosine_weight > 0  # attention maps need no hidden states
    if loss_cfg.attention_weight > 0 and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise LmcError(f"attention transfer needs equal head counts (student {student.config.num_attention_heads}, "
                       f"teacher {teacher.config.num_attention_heads}); use --minilm-weight instead")
    if loss_cfg.cosine_weight > 0 and model_width(student.config) != model_width(teacher.config):
        raise LmcError("the cosine loss needs equal hidden widths; use --hidden-weight (learned projection) instead")
    if loss_cfg.minilm_weight > 0:
        for name, width in (("student", model_width(student.config)), ("teacher", model_width(teacher.config))):
            if width % loss_cfg.relation_heads:
                raise LmcError(f"--relation-heads {loss_cfg.relation_heads} does not divide the {name} width {width}")
    needs = Needs(
        hidden=tuple(sorted(set(([0] if loss_cfg.embedding_weight > 0 else []) + (layer_map if reads_hidden else [])))),
        attentions=loss_cfg.attention_weight > 0, qkv=loss_cfg.minilm_weight > 0)
    if needs.attentions:  # attention probabilities need the eager kernel; inference keeps sdpa
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
    return needs


def projection_count(loss_cfg, layer_map: list[int]) -> int:
    """Learned width projections the hidden-state and embedding losses use (one per mapped layer / embeddings)."""
    return (len(layer_map) if loss_cfg.hidden_weight > 0 else 0) + (1 if loss_cfg.embedding_weight > 0 else 0)


def intermediate_loss(module: DistillModule, s_hidden, s_attn, t_hidden: dict[int, torch.Tensor], t_attn,
                      s_qkv: dict[str, torch.Tensor] | None, t_qkv: dict[str, torch.Tensor] | None,
                      mask: torch.Tensor, layer_map: list[int], loss_cfg) -> torch.Tensor | float:
    """The weighted sum of the embedding, hidden-state, cosine, attention and MiniLM relation losses.

    s_hidden: the student's hidden states (tuple of [B, T, Hs], index 0 = embeddings); t_hidden {index: [B, T, Ht]};
    s_attn / t_attn: tuples of [B, A, T, T]; s_qkv / t_qkv: last layer's query/key/value [B, T, H]; mask [B, T].
    """
    total: torch.Tensor | float = 0.0
    proj = 0
    if loss_cfg.embedding_weight > 0:
        total = total + loss_cfg.embedding_weight * losses.hidden_mse(
            s_hidden[0], t_hidden[0], mask, module.project(proj))
        proj += 1
    for s_layer, t_layer in enumerate(layer_map, start=1):
        if loss_cfg.hidden_weight > 0:
            total = total + loss_cfg.hidden_weight * losses.hidden_mse(
                s_hidden[s_layer], t_hidden[t_layer], mask, module.project(proj)) / len(layer_map)
            proj += 1
        if loss_cfg.cosine_weight > 0:
            total = total + loss_cfg.cosine_weight * losses.cosine_hidden_loss(
                s_hidden[s_layer], t_hidden[t_layer], mask) / len(layer_map)
        if loss_cfg.attention_weight > 0:
            total = total + loss_cfg.attention_weight * losses.attention_loss(
                s_attn[s_layer - 1], t_attn[t_layer - 1], mask, loss_cfg.attention_kind) / len(layer_map)
    if s_qkv is not None:
        for part in ("query", "key", "value"):
            total = total + loss_cfg.minilm_weight * losses.minilm_relation_loss(
                s_qkv[part], t_qkv[part].float(), mask, loss_cfg.relation_heads) / 3
    return total


class QKVRecorder:
    """Forward hooks that keep the last layer's query/key/value projections [B, T, H] (MiniLM-v2)."""

    def __init__(self, model: nn.Module):
        names = [n for n, _ in model.named_modules() if n.endswith("attention.self.query")]
        if not names:
            raise LmcError(f"MiniLM relations need a BERT/RoBERTa-style attention; {type(model).__name__} has none")
        prefix = names[-1].rsplit(".", 1)[0]
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[f"{prefix}.{part}"].register_forward_hook(self._keep(part))
                        for part in ("query", "key", "value")]

    def _keep(self, part: str):
        def hook(module, inputs, output):
            self.outputs[part] = output

        return hook


def distill(cfg: DistillConfig, stage: str = "distill", extra: dict[str, Any] | None = None,
            request: dict[str, Any] | None = None) -> dict[str, Any]:
    """`stage`/`extra`/`request` let stages built on distillation (prune recovery) name themselves in
    lmcompress.json and recognise their own interrupted runs."""
    run = RunDir(cfg.out)
    request = request or to_dict(cfg)
    cfg.resume = run.check(cfg.overwrite, cfg.resume, request)
    teacher_dir = _teacher_dir(cfg.teacher)
    data_cfg = data_config_for(cfg.data, teacher_dir)
    task_data = load_task(data_cfg)
    regression = task_data.task == "regression"
    teacher = load_trained_classifier(teacher_dir, task_data.labels, regression, task_data.task).eval()
    tokenizer = load_tokenizer(teacher_dir)
    if is_static_spec(cfg.student):
        return distill_static(cfg, run, request, teacher, teacher_dir, tokenizer, task_data, data_cfg)
    student, copied, student_tokenizer = _make_student(cfg, teacher, teacher_dir, tokenizer, task_data)
    cross_vocabulary = student_tokenizer.get_vocab() != tokenizer.get_vocab()
    n_s, n_t = layer_count(student.config), layer_count(teacher.config)
    loss_cfg = cfg.loss
    layer_map = parse_layer_map(loss_cfg.layer_map, n_s, n_t, copied)
    needs = intermediate_needs(student, teacher, loss_cfg, layer_map)
    per_position = task_data.task in (TOKEN_TASK, QA_TASK)  # logits per token, not per sequence
    if cross_vocabulary and per_position:
        raise LmcError(f"the student's tokenizer differs from the teacher's; {task_data.task} compares the two "
                       "models position by position on the same sub-tokens, so the student must share the teacher's "
                       "tokenizer (a preset or a derived spec does)")
    if cross_vocabulary:
        if needs.hidden or needs.attentions or needs.qkv:
            raise LmcError("the student's tokenizer differs from the teacher's, so their token positions do not line "
                           "up: only logit KD and hard labels work across vocabularies (drop --hidden-weight, "
                           "--embedding-weight, --cosine-weight, --attention-weight and --minilm-weight), or give a "
                           "student that shares the teacher's tokenizer (a preset or a derived spec does)")
        log.info("the student has its own tokenizer (%d tokens vs the teacher's %d): each side tokenises the raw "
                 "text itself", len(student_tokenizer), len(tokenizer))
    if cfg.intermediate_epochs > 0 and not (needs.hidden or needs.attentions or needs.qkv):
        raise LmcError("--intermediate-epochs (TinyBERT two-stage) trains the intermediate layers first: give "
                       "--hidden-weight, --attention-weight, --embedding-weight or --minilm-weight")

    log.info("student: %s layers (teacher layers %s), width %d, %s params vs teacher %s", n_s, layer_map,
             model_width(student.config), f"{sum(p.numel() for p in student.parameters()):,}",
             f"{sum(p.numel() for p in teacher.parameters()):,}")
    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        transformers.set_seed(cfg.train.seed)  # projections start the same whatever ran before in this process
        max_len = data_cfg.max_length
        train_frame, augment_record = task_data.splits["train"], None
        if cfg.augment or cfg.augment_replace:
            extra_rows, augment_record = augmentation_rows(cfg, task_data, teacher, tokenizer)
            train_frame = pd.concat([train_frame, extra_rows], ignore_index=True)
        train_set = tokenize_frame(train_frame, student_tokenizer, max_len, task_data.qa_options)
        train_set = train_set.add_column("idx", list(range(len(train_set))))
        teacher_ids = train_set["input_ids"]
        collate = collator(student_tokenizer)
        if cross_vocabulary:  # the teacher reads its own tokens of the same rows (TEACHER_PREFIX columns)
            teacher_set = tokenize_frame(train_frame, tokenizer, max_len).remove_columns("labels")
            teacher_ids = teacher_set["input_ids"]
            for column in teacher_set.column_names:
                train_set = train_set.add_column(TEACHER_PREFIX + column, teacher_set[column])
            collate = PairedCollator(student_tokenizer, tokenizer)
        sharding = shard_teacher(teacher) if cfg.fsdp else None  # after augmentation read its embeddings whole
        module = DistillModule(student, model_width(student.config), model_width(teacher.config),
                               projection_count(loss_cfg, layer_map))
        cache = None
        if cfg.cache and not needs.attentions and not needs.qkv:
            cache = on_every_process(lambda: TeacherCache(
                Path(cfg.cache_dir) if cfg.cache_dir else default_root(), teacher_fingerprint(teacher_dir),
                teacher_ids, teacher.config.num_labels, needs.hidden, model_width(teacher.config),
                per_token=per_position))
        elif cfg.cache:
            log.info("teacher cache off: attention maps and Q/K/V relations are computed live")
        monitor = MAIN_METRIC[task_data.task]

        def evaluate_fn(m: DistillModule) -> dict[str, float]:
            return score_split(m.student, student_tokenizer, task_data, "validation", max_len,
                               cfg.train.eval_batch_size)

        def run_phase(phase: str, train_cfg, folder: Path, resume: bool):
            loss_fn = _make_loss_fn(teacher, cache, needs, layer_map, loss_cfg, task_data.task, cfg.teacher_precision,
                                    phase)
            return fit(module, train_set, collate, train_cfg, loss_fn=loss_fn, evaluate_fn=evaluate_fn,
                       monitor=monitor, higher_is_better=True, run_folder=folder, resume=resume,
                       description=f"distill {Path(cfg.out).name}" + (f" ({phase} layers)" if phase != "all" else ""))

        try:
            if cache is not None:  # the teacher's pass, once, before training: every epoch then reads the cache
                fill_teacher_cache(cache, train_set, teacher_ids, collate,
                                   TeacherOutputs(teacher, cache, needs, cfg.teacher_precision),
                                   cfg.train.eval_batch_size)
            if cfg.intermediate_epochs > 0:  # TinyBERT: intermediate layers first, then the prediction layer
                first = run.partial / INTERMEDIATE_STAGE
                done = first / "module.safetensors"
                if cfg.resume and done.is_file():
                    safetensors.torch.load_model(module, done)
                    log.info("intermediate-layer stage already complete: continuing with the prediction layer")
                else:
                    run_phase("intermediate", dataclasses.replace(cfg.train, epochs=cfg.intermediate_epochs,
                                                                  max_steps=None, keep_best=False),
                              first, cfg.resume and first.is_dir())
                    if is_main_process():
                        safetensors.torch.save_model(module, done)
                result = run_phase("prediction", cfg.train, run.partial, cfg.resume)
                shutil.rmtree(first, ignore_errors=True)
            else:
                result = run_phase("all", cfg.train, run.partial, cfg.resume)
        finally:
            if cache is not None:
                cache.flush()
        student = module.student.cpu()
        if needs.attentions:
            student.set_attn_implementation("sdpa")
        cache_stats = cache.stats() if cache is not None else None  # on every rank: it sums their counts
        metrics = finish_run(
            run, student, student_tokenizer, task_data, max_len, cfg.train.eval_batch_size,
            lambda: run_manifest(
                stage, str(teacher_dir), to_dict(cfg) | {"data": to_dict(data_cfg)}, task_data, result,
                student={"spec": cfg.student, "teacher_layers_copied": copied, "layer_map": layer_map, "layers": n_s,
                         "hidden": model_width(student.config)},
                teacher_cache=cache_stats, processes=num_processes(), teacher_sharding=sharding,
                augmentation=augment_record,
                **(extra or {})),
            wall_time_s=round(result.wall_time_s, 1))
    if cache_stats is not None:
        log.info("teacher cache: %d hits, %d misses", cache_stats["hits"], cache_stats["misses"])
    return metrics


def teacher_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's inputs in a training batch: its own tokens (TEACHER_PREFIX keys, when the student has another
    vocabulary), else the student's tokens without the targets."""
    own = {k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)}
    return own or {k: v for k, v in batch.items() if k not in TARGET_KEYS and k != "idx"}


def fill_teacher_cache(cache: TeacherCache, train_set, teacher_ids: list[list[int]], collate,
                       teacher_outputs: TeacherOutputs, batch_size: int) -> None:
    """Run the teacher once over every training row the cache lacks, in batches of similar length (little padding,
    so faster than meeting the rows in training order); under a launcher each rank takes every n-th of them."""
    missing = np.flatnonzero(~cache.complete())
    state = process_state()
    mine = sorted(missing.tolist(), key=lambda i: len(teacher_ids[i]))[state.process_index::state.num_processes]
    batches = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
    if teacher_outputs.sharded and len(missing):
        # every rank runs the sharded teacher equally often: one with fewer rows repeats a batch and keeps nothing
        most = -(-len(missing) // state.num_processes)  # rank 0's share, the largest
        batches += [None] * (-(-most // batch_size) - len(batches))
    if len(missing):
        log.info("teacher pass over %d training rows (cached for every epoch)", len(missing))
        device = state.device
        if not teacher_outputs.sharded:
            teacher_outputs.teacher.to(device)
        for rows in batches:
            batch = collate([train_set[int(i)] for i in (rows if rows is not None else mine[:1] or [0])])
            inputs = {k: v.to(device) for k, v in teacher_inputs(batch).items()}
            teacher_outputs.compute(inputs, batch["idx"], keep=rows is not None)
    wait_for_everyone()


class PairedCollator:
    """Pads the student's tokens with its tokenizer and the teacher's (TEACHER_PREFIX keys) with the teacher's."""

    def __init__(self, student_tokenizer, teacher_tokenizer):
        self.student, self.teacher = collator(student_tokenizer), collator(teacher_tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        own = [{k: v for k, v in f.items() if not k.startswith(TEACHER_PREFIX)} for f in features]
        theirs = [{k[len(TEACHER_PREFIX):]: v for k, v in f.items() if k.startswith(TEACHER_PREFIX)} for f in features]
        return dict(self.student(own)) | {TEACHER_PREFIX + k: v for k, v in self.teacher(theirs).items()}


def augmentation_rows(cfg: DistillConfig, task_data, teacher, tokenizer) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Texts for the teacher to label, label UNLABELLED (the hard-label loss skips them, logit KD does not): the
    documents of --augment, then --augment-replace word-replaced variants of the training texts. Texts equal to a
    validation or test row are dropped so nothing held out leaks in. -> (rows, record for lmcompress.json)"""
    from ..data.corpora import load_corpus
    from .augment import EmbeddingNeighbours, word_replaced_texts

    if task_data.task != "classification" or task_data.has_pair:
        raise LmcError("--augment / --augment-replace add single texts to a sequence-classification task; this task "
                       f"is {'a pair task' if task_data.has_pair else 'a ' + task_data.task}")
    held_out = {str(t).strip() for split in ("validation", "test") for t in task_data.splits[split]["text"]}
    texts, record = [], {}
    if cfg.augment:
        documents, _ = load_corpus(cfg.augment)
        texts += [" ".join(document).strip() for document in documents]
        record["source"] = cfg.augment
    if cfg.augment_replace:
        neighbours = EmbeddingNeighbours(tokenizer, teacher.get_input_embeddings().weight)
        variants = word_replaced_texts(task_data.splits["train"]["text"].tolist(), neighbours, cfg.augment_replace,
                                       cfg.augment_replace_prob, cfg.train.seed)
        texts += variants
        record["word_replacement"] = {"variants_per_text": cfg.augment_replace, "probability": cfg.augment_replace_prob,
                                      "neighbours": f"{neighbours.k} nearest of {len(neighbours.words)} whole-word "
                                                    "tokens in the teacher's input embeddings", "rows": len(variants)}
    kept = [t for t in texts if t and t.strip() not in held_out]
    if cfg.max_augment_rows:
        kept = kept[:cfg.max_augment_rows]
    if not kept:
        raise LmcError("the augmentation gives no texts outside the validation and test rows")
    record["rows"] = len(kept)
    log.info("augmentation: %d unlabelled rows for the teacher to label (%d equal to held-out rows dropped)",
             len(kept), sum(1 for t in texts if t.strip() in held_out))
    return pd.DataFrame({"text": kept, "label": [UNLABELLED] * len(kept)}), record


def _teacher_dir(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        hint = " (fine-tune it first: lmcompress finetune --model NAME --data D --out runs/teacher)" \
            if not path.exists() else ""
        raise LmcError(f"--teacher {spec} is not a fine-tuned run or Hugging Face checkpoint{hint}")
    return path


def _make_student(cfg: DistillConfig, teacher, teacher_dir: Path, tokenizer, task_data):
    """-> (student, teacher layers copied or None, student tokenizer)"""
    albert = parse_albert_spec(cfg.student)
    if albert is not None:
        student, copied = albert_from_bert(teacher, albert)
        return student, copied, tokenizer
    if is_derived_spec(cfg.student):
        student, copied = build_student(teacher, parse_spec(cfg.student))
        return student, copied, tokenizer
    if presets.parse_preset(cfg.student) is not None and not Path(cfg.student).exists():
        source = resolve(cfg.student, tokenizer=str(teacher_dir), role="student")
        student = load_for_sequence_classification(source, tokenizer, task_data.num_labels, task_data.labels,
                                                   task_data.task == "regression", cfg.train.seed,
                                                   head=task_head(task_data.task))
        return student, None, tokenizer
    source = resolve(cfg.student, role="student")
    return load_student_like(teacher, source.path), None, load_tokenizer(source.tokenizer_path)


class TeacherOutputs:
    """The teacher's outputs for a batch of training rows: read back from the cache, or computed (and then cached)."""

    def __init__(self, teacher, cache: TeacherCache | None, needs: Needs, teacher_precision: str):
        self.teacher, self.cache, self.needs, self.precision = teacher, cache, needs, teacher_precision
        self.sharded = is_sharded(teacher)

    def __call__(self, inputs: dict[str, torch.Tensor], idx: torch.Tensor):
        """inputs: the teacher's tokens (no labels) -> logits [B, C], {hidden index: [B, T, Ht]}, attentions or None"""
        cached = self.cache is not None and self.cache.has(idx)
        # a sharded teacher runs on every rank or on none (every rank must ask): unless all have their rows cached
        runs = not on_all_processes(cached) if self.sharded else not cached
        computed = self.compute(inputs, idx, keep=not cached) if runs else None
        if not cached:
            return computed
        logits, hidden = self.cache.read(idx, inputs["input_ids"].shape[1])
        device = inputs["input_ids"].device
        return logits.to(device), {k: v.to(device) for k, v in hidden.items()}, None

    def compute(self, inputs: dict[str, torch.Tensor], idx: torch.Tensor, keep: bool = True):
        """The teacher's forward; with `keep`, its outputs go into the cache."""
        autocast = torch.autocast(device_type=inputs["input_ids"].device.type, dtype=torch.bfloat16) \
            if self.precision == "bf16" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            out = adapt(self.teacher(**inputs, output_hidden_states=bool(self.needs.hidden),
                                     output_attentions=self.needs.attentions), inputs)
        hidden = {i: out.hidden_states[i].float() for i in self.needs.hidden}
        logits = out.logits.float()
        if self.cache is not None and keep:
            self.cache.write(idx, logits, hidden)
            # the cache keeps hidden states in fp16: use the same values live, so a batch gives the same loss
            # whether its teacher outputs were computed now or read back (a resumed run then matches bitwise)
            hidden = {i: h.half().float() for i, h in hidden.items()}
        return logits, hidden, out.attentions


def _make_loss_fn(teacher, cache: TeacherCache | None, needs: Needs, layer_map: list[int], loss_cfg, task: str,
                  teacher_precision: str, phase: str = "all"):
    """phase "all": every loss; "intermediate": only the intermediate-layer losses (TinyBERT stage 1);
    "prediction": only logit KD + hard labels (TinyBERT stage 2)."""
    teacher_qkv = QKVRecorder(teacher) if needs.qkv else None
    student_qkv: dict[int, QKVRecorder] = {}
    want_student_hidden = bool(needs.hidden)
    regression = task == "regression"

    teacher_outputs = TeacherOutputs(teacher, cache, needs, teacher_precision)

    def _output_loss(out, t_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """alpha * hard-label loss + (1 - alpha) * logit KD (MSE to the teacher's prediction for regression, KD of
        the start and end distributions for question answering)."""
        if task == QA_TASK:
            soft = losses.span_kd_loss(out.logits, t_logits, batch["attention_mask"], loss_cfg.temperature,
                                       loss_cfg.kd_kind)
            return losses.mix_hard_and_soft(out.loss, soft, loss_cfg.alpha)
        labels = batch["labels"]
        if regression:
            soft = torch.nn.functional.mse_loss(out.logits.float().squeeze(-1), t_logits.squeeze(-1))
        else:
            # [B, C] per sequence; [B, T, C] per token, compared on the labelled (first sub-token) positions only
            mask = (labels != UNLABELLED) if out.logits.dim() == 3 else None
            soft = losses.kd_loss(out.logits, t_logits, loss_cfg.temperature, mask, loss_cfg.kd_kind)
        hard = out.loss
        if out.logits.dim() == 2 and not regression and bool((labels == UNLABELLED).any()):
            # augmentation rows: the teacher's labels only
            labelled = labels != UNLABELLED
            hard = torch.nn.functional.cross_entropy(out.logits[labelled].float(), labels[labelled]) \
                if labelled.any() else out.logits.sum() * 0.0
        return losses.mix_hard_and_soft(hard, soft, loss_cfg.alpha)

    def loss_fn(module: DistillModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        idx = batch.pop("idx")
        # the teacher's inputs: its own tokens of these rows (another vocabulary), else the student's batch
        t_inputs = teacher_inputs(batch)
        for key in [k for k in batch if k.startswith(TEACHER_PREFIX)]:
            del batch[key]
        mask = batch["attention_mask"]  # [B, T]
        if teacher.device != batch["input_ids"].device:
            teacher.to(batch["input_ids"].device)
        if needs.qkv and id(module.student) not in student_qkv:
            student_qkv[id(module.student)] = QKVRecorder(module.student)
        t_logits, t_hidden, t_attn = teacher_outputs(t_inputs, idx)
        out = adapt(module.student(**batch, output_hidden_states=want_student_hidden,
                                   output_attentions=needs.attentions), batch)
        if phase == "prediction":
            return _output_loss(out, t_logits, batch)
        total = _output_loss(out, t_logits, batch) if phase == "all" else 0.0
        s_qkv = student_qkv[id(module.student)].outputs if needs.qkv else None
        total = total + intermediate_loss(module, out.hidden_states, out.attentions, t_hidden, t_attn, s_qkv,
                                          teacher_qkv.outputs if needs.qkv else None, mask, layer_map, loss_cfg)
        return total

    return loss_fn
