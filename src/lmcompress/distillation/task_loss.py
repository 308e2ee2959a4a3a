"""The loss of task distillation (`lmcompress distill`): hard labels mixed with logit KD, plus the intermediate
losses; it returns the total and its weighted parts, which the training loop logs one by one."""

from __future__ import annotations

import torch

from ..data.qa import QA_TASK
from ..models.outputs import adapt, mean_pool
from . import losses
from .cache import TeacherCache
from .components import (TEACHER_PREFIX, DistillModule, Needs, QKVRecorder, TeacherOutputs, intermediate_loss,
                         teacher_inputs)

UNLABELLED = -100  # label of augmentation rows: ignored by the hard-label loss
LossWithParts = tuple[torch.Tensor, dict[str, torch.Tensor]]


def make_task_loss_fn(teacher, cache: TeacherCache | None, needs: Needs, layer_map: list[int], loss_cfg, task: str,
                  teacher_precision: str, phase: str = "all"):
    """phase "all": every loss; "intermediate": only the intermediate-layer losses (TinyBERT stage 1);
    "prediction": only logit KD + hard labels (TinyBERT stage 2)."""
    teacher_qkv = QKVRecorder(teacher) if needs.qkv else None
    student_qkv: dict[int, QKVRecorder] = {}
    want_student_hidden = bool(needs.hidden)
    regression = task == "regression"

    teacher_outputs = TeacherOutputs(teacher, cache, needs, teacher_precision)

    def _output_loss(out, t_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> LossWithParts:
        """alpha * hard-label loss + (1 - alpha) * logit KD (MSE to the teacher's prediction for regression, KD of
        the start and end distributions for question answering)."""
        if task == QA_TASK:
            soft = losses.span_kd_loss(out.logits, t_logits, batch["attention_mask"], loss_cfg.temperature,
                                       loss_cfg.kd_kind)
            return losses.mix_hard_and_soft(out.loss, soft, loss_cfg.alpha), _parts(out.loss, soft)
        labels = batch["labels"]
        if regression:
            soft = torch.nn.functional.mse_loss(out.logits.float().squeeze(-1), t_logits.squeeze(-1))
        else:
            # [B, C] per sequence; [B, T, C] per token, compared on the labelled (first sub-token) positions only
            mask = (labels != UNLABELLED) if out.logits.dim() == 3 else None
            soft = losses.kd_loss(out.logits, t_logits, loss_cfg.temperature, mask, loss_cfg.kd_kind)
        hard = _hard_loss(out, labels)
        return losses.mix_hard_and_soft(hard, soft, loss_cfg.alpha), _parts(hard, soft)

    def _hard_loss(out, labels: torch.Tensor) -> torch.Tensor:
        """The student's loss on the labels; augmentation rows (UNLABELLED) have the teacher's labels only."""
        if out.logits.dim() == 2 and not regression and bool((labels == UNLABELLED).any()):
            labelled = labels != UNLABELLED
            return torch.nn.functional.cross_entropy(out.logits[labelled].float(), labels[labelled]) \
                if labelled.any() else out.logits.sum() * 0.0
        return out.loss

    def _parts(hard: torch.Tensor, soft: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term as it enters the total (weighted), detached: for the logs only."""
        return {"hard": (loss_cfg.alpha * hard).detach(), "kd": ((1.0 - loss_cfg.alpha) * soft).detach()}

    def loss_fn(module: DistillModule, batch: dict[str, torch.Tensor]) -> LossWithParts:
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
        total, parts = _output_loss(out, t_logits, batch) if phase == "all" else (0.0, {})
        s_qkv = student_qkv[id(module.student)].outputs if needs.qkv else None
        t_pooled = mean_pool(t_hidden[needs.pooled], t_inputs["attention_mask"]) if needs.pooled else None
        inner, inner_parts = intermediate_loss(module, out.hidden_states, out.attentions, t_hidden, t_attn, s_qkv,
                                               teacher_qkv.outputs if needs.qkv else None, mask, layer_map, loss_cfg,
                                               t_pooled)
        return total + inner, parts | inner_parts

    def labels_only_fn(module: DistillModule, batch: dict[str, torch.Tensor]) -> LossWithParts:
        """alpha 1 without intermediate losses (prune --recovery finetune): the labels alone; the teacher never runs."""
        batch = {k: v for k, v in batch.items() if k != "idx" and not k.startswith(TEACHER_PREFIX)}
        out = adapt(module.student(**batch), batch)
        hard = out.loss if task == QA_TASK else _hard_loss(out, batch["labels"])
        return hard, {"hard": hard.detach()}

    return labels_only_fn if uses_labels_only(loss_cfg, needs, phase) else loss_fn


def uses_labels_only(loss_cfg, needs: Needs, phase: str = "all") -> bool:
    """Whether the loss takes nothing from the teacher: all weight on the labels and no intermediate loss."""
    return loss_cfg.alpha == 1.0 and phase != "intermediate" and not (needs.hidden or needs.attentions or needs.qkv)
