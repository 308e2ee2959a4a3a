"""lmcompress.json as a typed record: what a stage writes reads back the same, and the questions asked of it."""

from __future__ import annotations

import json

import pytest

from lmcompress.errors import LmcError
from lmcompress.runs.manifest import (Manifest, PruningRecord, TaskRecord, TrainingRecord, read_manifest,
                                      write_manifest)

PRUNED = {"stage": "prune", "parent": "/runs/teacher", "config": {"heads": 0.5, "data": {"data": "reviews.csv"}},
          "data": {"test_fingerprint": "ab12", "rows": 240},
          "task": {"type": "classification", "labels": ["neg", "pos"], "has_pair": False},
          "student": {"spec": "/runs/.pruned.pruned-init", "teacher_layers_copied": [0, 1], "layer_map": [1, 2]},
          "pruning": {"kept_layers": [0, 1], "heads_per_layer": "4 -> 2", "hidden": "32 -> 16", "ffn_per_layer":
                      "37 -> 37", "params": "100,000 -> 60,000", "head_size": 8, "recovery": "distill"},
          "train": {"steps": 30, "wall_time_s": 4.2, "examples_per_s": 120.5, "best_epoch": 2,
                    "history": [{"epoch": 1, "accuracy": 0.7}]},
          "teacher_cache": {"hits": 10, "misses": 0}, "prune_config": {"heads": 0.5},
          "versions": {"lmcompress": "0.1.0"}, "created": "2026-01-01T00:00:00+00:00", "complete": True,
          "finished": "2026-01-01T00:01:00+00:00"}
CAUSAL = {"stage": "prune-lm", "parent": "smollm2-135m", "config": {}, "data": {"validation_fingerprint": "cd"},
          "task": {"type": "clm", "family": "llama"}, "lm_config": {"objective": "clm"},
          "versions": {}, "created": "2026-01-01T00:00:00+00:00"}
EMBEDDINGS = {"stage": "distill-embeddings", "parent": "minilm-l6", "config": {}, "data": None,
              "task": {"type": "sentence-embedding"}, "train": {"steps": 4, "wall_time_s": 1.0, "examples_per_s": 9.0,
                                                                "best_epoch": None, "history": []},
              "versions": {}, "created": "2026-01-01T00:00:00+00:00"}
REGRESSION = PRUNED | {"stage": "finetune", "task": {"type": "regression", "labels": None, "has_pair": True}}
ON_GPU = PRUNED | {"train": PRUNED["train"] | {"device": "cuda (NVIDIA H200)", "precision": "bf16"}}


@pytest.mark.parametrize("raw", [PRUNED, CAUSAL, EMBEDDINGS, REGRESSION, ON_GPU],
                         ids=["prune", "prune-lm", "distill-embeddings", "regression", "trained-on-a-gpu"])
def test_a_written_manifest_reads_back_to_the_same_json(raw, tmp_path):
    (tmp_path / "lmcompress.json").write_text(json.dumps(raw))
    manifest = read_manifest(tmp_path)
    write_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / "lmcompress.json").read_text()) == raw


def test_the_records_are_typed_and_answer_what_stages_ask(tmp_path):
    manifest = Manifest.from_json(PRUNED)
    assert manifest.task == TaskRecord("classification", ["neg", "pos"], False)
    assert isinstance(manifest.train, TrainingRecord) and manifest.train.examples_per_s == 120.5
    assert manifest.pruning == PruningRecord([0, 1], {"heads_per_layer": "4 -> 2", "hidden": "32 -> 16",
                                                      "ffn_per_layer": "37 -> 37", "params": "100,000 -> 60,000"},
                                             {"head_size": 8, "recovery": "distill"})
    assert manifest.made_by() == "prune heads 4 -> 2, hidden 32 -> 16"  # the unchanged FFN is not named
    assert manifest.records == {"teacher_cache": {"hits": 10, "misses": 0}, "prune_config": {"heads": 0.5}}
    assert manifest.data_options == {"data": "reviews.csv"} and manifest.test_fingerprint == "ab12"
    assert manifest.layers_kept_from(tmp_path / "teacher") is None  # not cut from that folder
    causal = Manifest.from_json(CAUSAL)
    assert causal.is_language_model and not causal.is_embedding_run and causal.made_by() == "prune-lm"


def test_layers_kept_follow_the_stage_that_cut_them(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    pruned = Manifest.from_json(PRUNED | {"parent": str(teacher)})
    distilled = Manifest.from_json(PRUNED | {"parent": str(teacher), "stage": "distill"})
    finetuned = Manifest.from_json(PRUNED | {"parent": str(teacher), "stage": "finetune"})
    assert pruned.layers_kept_from(teacher) == [0, 1] and distilled.layers_kept_from(teacher) == [0, 1]
    assert finetuned.layers_kept_from(teacher) is None


def test_a_plain_folder_has_an_empty_manifest_and_a_corrupt_one_is_one_line(tmp_path):
    plain = read_manifest(tmp_path)
    assert not plain.is_run and plain.made_by() == "checkpoint" and plain.quantization_method is None
    (tmp_path / "lmcompress.json").write_text("{not json")
    with pytest.raises(LmcError, match="lmcompress.json is corrupt"):
        read_manifest(tmp_path)
    (tmp_path / "lmcompress.json").write_text(json.dumps({"task": {"type": "clm", "colour": "red"}}))
    with pytest.raises(LmcError, match="lmcompress.json is corrupt"):
        read_manifest(tmp_path)
