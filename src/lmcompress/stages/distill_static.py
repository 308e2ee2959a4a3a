"""`distill --student static[;dim=256][;table=tuned|frozen]`: the fast end of the frontier.

1. A static token-embedding table from the teacher's encoder, by model2vec's method (the model2vec library): every
   vocabulary token through the teacher, mean-pooled, PCA to `dim`, SIF/Zipf weighting of frequent tokens.
2. A linear head over the mean of a text's token vectors, trained on the task by KD from the teacher's logits plus
   hard labels (`--alpha`, `--temperature`), with the table fine-tuned too unless `table=frozen`.
The teacher runs once over the training rows (its logits are kept for every epoch); the run is saved in model2vec's
format plus the head (models/static.py). Sequence tasks only: token-level tasks are refused in one line.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from ..config import DistillConfig, TrainConfig, to_dict
from ..data.tokenize import collator, tokenize_frame
from ..errors import LmcError
from ..runkinds.task import finish_run, predict, score_split
from ..scores import MAIN_METRIC
from ..models.static import StaticClassifier
from ..distributed import num_processes, process_state
from ..runs.manifest import run_manifest
from ..training import fit
from ..distillation import losses

log = logging.getLogger("lmcompress")

SEQUENCE_TASKS = ("classification", "regression")
# a fresh linear head (and a table never trained on the task) needs a larger step and more passes than a
# transformer student; an epoch costs seconds, and the best epoch is kept
STATIC_LEARNING_RATE = 2e-3
STATIC_EPOCHS = 20.0


@dataclass(frozen=True)
class StaticSpec:
    dim: int = 256
    table: str = "tuned"  # "tuned": the table learns with the head; "frozen": only the head learns


def is_static_spec(spec: str) -> bool:
    return spec == "static" or spec.startswith("static;")


def parse_static_spec(spec: str) -> StaticSpec:
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(";")[1:])):
        key, _, raw = part.partition("=")
        if key == "dim" and raw.isdigit() and int(raw) > 0:
            values["dim"] = int(raw)
        elif key == "table" and raw in ("tuned", "frozen"):
            values["table"] = raw
        else:
            raise LmcError(f"static student item '{part}': expected dim=N (N > 0) or table=tuned|frozen")
    return StaticSpec(**values)


def static_student(teacher, tokenizer, spec: StaticSpec, num_labels: int, head_config: dict[str, Any],
                   max_length: int):
    """-> (StaticClassifier with model2vec's table from the teacher's encoder, its tokenizer for transformers);
    `max_length` goes into the saved config, so model2vec's own encode truncates as training did."""
    from model2vec.distill import distill_from_model  # heavy import (sklearn PCA, tokenizer surgery): only here

    width = teacher.config.hidden_size
    dim = min(spec.dim, width)
    if dim < spec.dim:
        log.info("dim=%d is wider than the teacher (%d): the table keeps %d dimensions", spec.dim, width, dim)
    log.info("building the static table: every vocabulary token through the teacher, PCA to %d (model2vec)", dim)
    try:
        static = distill_from_model(teacher.base_model, tokenizer, pca_dims=dim, quantize_to="float32",
                                    device=str(process_state().device))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise LmcError(f"model2vec could not distil this teacher into a static table: {exc}") from None
    finally:
        teacher.cpu()  # model2vec leaves the encoder on its device
    table = torch.from_numpy(static.embedding).float()
    if static.weights is not None:
        table = table * torch.from_numpy(static.weights).float().unsqueeze(-1)
    # one scale for the whole table (directions kept): PCA outputs of a teacher can be tiny, and a head on inputs
    # of std 0.006 barely learned at any sane learning rate
    table = table / table.std().clamp(min=1e-12)
    fast = PreTrainedTokenizerFast(tokenizer_object=static.tokenizer, unk_token=tokenizer.unk_token,
                                   pad_token=tokenizer.pad_token or tokenizer.unk_token,
                                   model_max_length=tokenizer.model_max_length)
    unk_id = fast.unk_token_id if fast.unk_token is not None else None
    model = StaticClassifier(table, num_labels, unk_id, head_config | {"unk_id": unk_id},
                             dict(static.config, max_length=max_length),
                             static.tokenizer.to_str())
    if spec.table == "frozen":
        model.embeddings.weight.requires_grad_(False)
    return model, fast


def distill_static(cfg: DistillConfig, run, request: dict[str, Any], teacher, teacher_dir: Path, tokenizer,
                   task_data, data_cfg) -> dict[str, Any]:
    """The distill stage for a static student (the run dir is checked, not begun)."""
    if task_data.task not in SEQUENCE_TASKS:
        raise LmcError(f"a static student pools one vector per text; {task_data.task} needs one per token: "
                       "give a transformer student (layers=N, a preset or a folder)")
    spec = parse_static_spec(cfg.student)
    _refuse_transformer_options(cfg)
    regression = task_data.task == "regression"
    train_cfg = _static_train_config(cfg.train)
    head_config = {"labels": task_data.labels, "problem_type": "regression" if regression else
                   "single_label_classification", "teacher": str(teacher_dir)}
    torch.manual_seed(cfg.train.seed)  # the head's initialisation: the same whatever ran before in this process
    student, student_tokenizer = static_student(teacher, tokenizer, spec, task_data.num_labels, head_config,
                                                data_cfg.max_length)
    run.begin(cfg.overwrite, cfg.resume, request)
    with run.guard():
        max_len = data_cfg.max_length
        train_rows = task_data.splits["train"]
        log.info("teacher pass over %d training rows (its logits serve every epoch)", len(train_rows))
        teacher.to(process_state().device)  # where the student's fit runs too (a GPU when there is one)
        try:
            teacher_logits, _ = predict(teacher, tokenize_frame(train_rows, tokenizer, max_len), collator(tokenizer),
                                        cfg.train.eval_batch_size)
        finally:
            teacher.cpu()
        train_set = tokenize_frame(train_rows, student_tokenizer, max_len).add_column(
            "teacher_logits", teacher_logits.tolist())

        def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
            return score_split(m, student_tokenizer, task_data, "validation", max_len, cfg.train.eval_batch_size)

        result = fit(student, train_set, collator(student_tokenizer), train_cfg,
                     loss_fn=_loss_fn(cfg, regression), evaluate_fn=evaluate_fn, monitor=MAIN_METRIC[task_data.task],
                     higher_is_better=True, run_folder=run.partial, resume=cfg.resume,
                     description=f"distill {Path(cfg.out).name} (static)")
        student = student.cpu()
        record = {"kind": "static", "spec": cfg.student, "dim": student.embeddings.weight.shape[1], "table": spec.table,
                  "vocabulary": student.embeddings.weight.shape[0], "method": "model2vec distill_from_model"}
        return finish_run(run, student, student_tokenizer, task_data, max_len, cfg.train.eval_batch_size,
                          lambda: run_manifest("distill", str(teacher_dir),
                                               to_dict(cfg) | {"data": to_dict(data_cfg), "train": to_dict(train_cfg)},
                                               task_data, result, processes=num_processes(), student=record))


def _refuse_transformer_options(cfg: DistillConfig) -> None:
    """Options that only mean something for a transformer student: one line rather than silently ignored."""
    loss = cfg.loss
    weights = (("--hidden-weight", loss.hidden_weight), ("--embedding-weight", loss.embedding_weight),
               ("--cosine-weight", loss.cosine_weight), ("--pooled-weight", loss.pooled_weight),
               ("--attention-weight", loss.attention_weight), ("--minilm-weight", loss.minilm_weight))
    others = (("--intermediate-epochs", cfg.intermediate_epochs), ("--augment-replace", cfg.augment_replace),
              ("--augment-spans", cfg.augment_spans))
    given = [flag for flag, value in weights + others if value]
    given += [flag for flag, on in (("--augment", cfg.augment), ("--fsdp", cfg.fsdp)) if on]
    if given:
        raise LmcError(f"a static student has no layers or hidden states: drop {', '.join(given)} (static students "
                       "learn from the teacher's logits and the labels)")


def _static_train_config(train: TrainConfig) -> TrainConfig:
    """The learning rate and epochs the user gave, else the static student's own defaults (a value equal to the
    transformer default counts as not given)."""
    default = next(f for f in dataclasses.fields(DistillConfig) if f.name == "train").default_factory()
    changes = {}
    if train.learning_rate == default.learning_rate:
        changes["learning_rate"] = STATIC_LEARNING_RATE
    if train.epochs == default.epochs and train.max_steps is None:
        changes["epochs"] = STATIC_EPOCHS
    if changes:
        log.info("static student: %s (the transformer defaults suit a fresh head poorly; pass --learning-rate / "
                 "--epochs to choose)", ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in changes.items()))
    return dataclasses.replace(train, **changes)


def _loss_fn(cfg: DistillConfig, regression: bool):
    loss_cfg = cfg.loss

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        logits = model(**inputs).logits  # [B, C]
        teacher_logits = batch["teacher_logits"].to(logits.dtype)
        if regression:
            soft = F.mse_loss(logits.squeeze(-1).float(), teacher_logits.squeeze(-1).float())
            hard = F.mse_loss(logits.squeeze(-1).float(), batch["labels"].float())
        else:
            soft = losses.kd_loss(logits, teacher_logits, loss_cfg.temperature, kind=loss_cfg.kd_kind)
            hard = F.cross_entropy(logits.float(), batch["labels"])
        return losses.mix_hard_and_soft(hard, soft, loss_cfg.alpha)

    return loss_fn
