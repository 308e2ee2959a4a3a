"""`distill_model`, the in-memory library call under the distill stage: the same models and rows give the stage's
weights, it writes nothing outside its work folder, and it fills and reads a teacher cache it is handed."""

from __future__ import annotations

import os

import pytest
import torch

from lmcompress.config import DistillConfig, DistillLossConfig
from lmcompress.data import load_task
from lmcompress.data.tokenize import collator, tokenize_frame
from lmcompress.distillation.cache import TeacherCache
from lmcompress.distillation.train import DistillSettings, Evaluation, distill_model
from lmcompress.errors import LmcError
from lmcompress.models.load import load_tokenizer, load_trained_classifier
from lmcompress.runkinds.task import score_split
from lmcompress.runs.manifest import data_config_for
from lmcompress.stages.distill import distill
from lmcompress.surgery.student import build_student, parse_spec


def _config(teacher_run, out, **loss) -> DistillConfig:
    cfg = DistillConfig(teacher=str(teacher_run), student="layers=1;hidden=16", out=str(out), cache=False,
                        loss=DistillLossConfig(**loss))
    cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate = 1.0, 16, 2e-3
    return cfg


def _inputs(teacher_run, cfg: DistillConfig):
    """The teacher, a fresh derived student, and the training rows as the stage tokenises them."""
    data_cfg = data_config_for(cfg.data, teacher_run)
    task_data = load_task(data_cfg)
    tokenizer = load_tokenizer(teacher_run)
    teacher = load_trained_classifier(teacher_run, task_data.labels, False).eval()
    student, copied = build_student(teacher, parse_spec(cfg.student))
    rows = tokenize_frame(task_data.splits["train"], tokenizer, data_cfg.max_length)
    return teacher, student, copied, rows, tokenizer, task_data, data_cfg


def test_in_memory_call_gives_the_stage_weights_and_writes_nothing_else(tiny_teacher_run, tmp_path, monkeypatch):
    cfg = _config(tiny_teacher_run, tmp_path / "stage", hidden_weight=1.0, attention_weight=1.0)
    distill(cfg)
    from safetensors.torch import load_file

    stage_weights = load_file(tmp_path / "stage" / "model.safetensors")

    teacher, student, copied, rows, tokenizer, task_data, data_cfg = _inputs(tiny_teacher_run, cfg)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    scores = []
    evaluation = Evaluation(lambda model: scores.append(1) or score_split(
        model, tokenizer, task_data, "validation", data_cfg.max_length, 64), "accuracy")
    result = distill_model(teacher, student, rows, collator(tokenizer),
                           DistillSettings(cfg.loss, cfg.train, teacher_precision=cfg.teacher_precision), copied=copied,
                           evaluation=evaluation)
    assert os.listdir(work) == []  # checkpoints went to a temporary folder, now gone
    assert scores == [1] and result.fit.state.history[0]["epoch"] == 1  # one epoch, scored once
    assert result.layer_map == [2] and result.needs.attentions  # layer 1 of 1 <- the teacher's last layer
    assert result.student.config._attn_implementation == "sdpa"  # eager was for reading attention maps
    trained = result.student.state_dict()
    assert set(trained) == set(stage_weights)
    assert all(torch.equal(trained[k], stage_weights[k]) for k in stage_weights)


def test_a_handed_cache_is_filled_once_then_read(tiny_teacher_run, tmp_path):
    cfg = _config(tiny_teacher_run, tmp_path / "unused")
    cfg.train.epochs = 2.0
    teacher, student, copied, rows, tokenizer, _, _ = _inputs(tiny_teacher_run, cfg)
    cache = TeacherCache(tmp_path / "cache", "tiny", rows["input_ids"], teacher.config.num_labels)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill_model(teacher, student, rows, collator(tokenizer), DistillSettings(cfg.loss, cfg.train),
                           copied=copied, cache=cache, folder=tmp_path / "work")
    stats = cache.stats()
    assert stats["misses"] == len(rows)  # the pass before training
    assert stats["hits"] == 2 * len(rows)  # both epochs read it
    assert result.fit.state.history == []  # no evaluation: the last weights
    assert any(not torch.equal(before[k], v) for k, v in result.student.state_dict().items())
    assert (tmp_path / "work" / "checkpoint").is_dir()  # the given folder holds what a resume needs
    with pytest.raises(ValueError, match="holds a checkpoint of an earlier call"):  # never its stale weights
        distill_model(teacher, student, rows, collator(tokenizer), DistillSettings(cfg.loss, cfg.train),
                      copied=copied, folder=tmp_path / "work")
    with pytest.raises(LmcError, match="intermediate layers first"):  # TinyBERT's stage 1 without its losses
        distill_model(teacher, student, rows, collator(tokenizer),
                      DistillSettings(cfg.loss, cfg.train, intermediate_epochs=1.0), copied=copied)
