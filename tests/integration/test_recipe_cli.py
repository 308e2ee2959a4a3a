"""`lmcompress run RECIPE` on tiny models: chaining, idempotent re-runs, resume, and recipe errors."""

from __future__ import annotations

import json

import pytest
import yaml

from .cli_helpers import interrupt_backward_at, one_error_line, run_cli


def write_recipe(path, tiny_bert_dir, sentiment_csv, **step_overrides):
    steps = [
        {"name": "teacher", "stage": "finetune", "model": str(tiny_bert_dir),
         "data": {"data": str(sentiment_csv), "max_length": 32},
         "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "checkpoint_every_steps": 5}},
        {"name": "student", "stage": "distill", "teacher": "teacher", "student": "layers=1",
         "train": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3}},
        {"name": "pruned", "stage": "prune", "model": "teacher", "ffn": 0.5, "recovery": "none",
         "calibration_examples": 32},
        {"name": "int8", "stage": "quantize", "model": "pruned", "method": "onnx-int8"},
        {"name": "report", "stage": "compare", "runs": ["teacher", "student", "pruned", "int8"], "latency_repeats": 1},
    ]
    for step in steps:
        step.update(step_overrides.get(step["name"], {}))
    path.write_text(yaml.safe_dump({"name": "tiny", "steps": steps}))
    return path


def test_recipe_chains_stages_and_reruns_are_idempotent(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_bert_dir, sentiment_csv)
    out = tmp_path / "runs"
    code, stdout, err = run_cli(["run", str(recipe), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "pruned", "int8"]
    assert json.loads((out / "student" / "lmcompress.json").read_text())["parent"] == str(out / "teacher")
    assert json.loads((out / "int8" / "lmcompress.json").read_text())["parent"] == str(out / "pruned")
    stamps = {p: (out / p / "lmcompress.json").stat().st_mtime_ns for p in ("teacher", "student", "pruned", "int8")}

    code, stdout, err = run_cli(["run", str(recipe), "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.count("skipped (complete)") == 5
    assert stamps == {p: (out / p / "lmcompress.json").stat().st_mtime_ns for p in stamps}  # nothing redone

    code, stdout, err = run_cli(["run", str(recipe), "--out", str(out), "--only", "int8", "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "int8" / "lmcompress.json").stat().st_mtime_ns != stamps["int8"]
    assert stamps["teacher"] == (out / "teacher" / "lmcompress.json").stat().st_mtime_ns


def test_recipe_resumes_an_interrupted_step(tiny_bert_dir, sentiment_csv, tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_bert_dir, sentiment_csv)
    out = tmp_path / "runs"
    undo = interrupt_backward_at(monkeypatch, 8)
    code, _, err = run_cli(["run", str(recipe), "--out", str(out), "--quiet"], capsys)
    assert code == 1 and "interrupted at step 7" in err
    assert (out / ".teacher.partial" / "checkpoint" / "state.json").is_file() and not (out / "teacher").exists()
    undo()
    code, _, err = run_cli(["run", str(recipe), "--out", str(out)], capsys)
    assert code == 0, err
    assert "resuming the interrupted run" in err
    manifest = json.loads((out / "teacher" / "lmcompress.json").read_text())
    assert manifest["config"]["resume"] is True and manifest["train"]["steps"] == 24


@pytest.mark.parametrize("overrides, fragments", [
    ({"student": {"tempreature": 2}}, ["step 2 (student)", "unknown key(s) tempreature"]),
    ({"pruned": {"stage": "squash"}}, ["step 3 (pruned)", "stage must be one of"]),
    ({"teacher": {"out": "/etc"}}, ["step 1 (teacher)", "remove its 'out' key"]),
    ({"teacher": {"name": "../escape"}}, ["name must be letters, digits"]),
    ({"student": {"teacher": "int8"}}, ["step 2 (student)", "uses step int8, which runs later"]),
    ({"pruned": {"ffn": 1.5}}, ["step 3 (pruned)", "ffn is the share to remove"]),
])
def test_bad_recipes_fail_before_any_step_runs(tiny_bert_dir, sentiment_csv, tmp_path, capsys, overrides, fragments):
    recipe = write_recipe(tmp_path / "bad.yaml", tiny_bert_dir, sentiment_csv, **overrides)
    out = tmp_path / "runs"
    code, _, err = run_cli(["run", str(recipe), "--out", str(out)], capsys)
    assert code == 1
    one_error_line(err, *fragments)
    assert not out.exists()  # validated up front: nothing ran


def test_unknown_recipe_and_builtin_demo_parses(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 1
    one_error_line(err, "neither a file nor a built-in recipe (causal-lm, chinese-ner, demo, general-distillation)")
    from lmcompress.demo import demo_recipe
    from lmcompress.pipeline import parse

    for quick in (False, True):
        name, steps = parse(demo_recipe(quick), "demo", out=str(tmp_path))
        assert name == "demo" and [s.stage for s in steps].count("compare") == 1
        assert {s.name for s in steps} >= {"teacher", "distilled", "pruned", "albert", "pruned-int8", "report"}
        assert steps[-1].config.runs[0] == str(tmp_path / "teacher")
    assert parse(demo_recipe(True), "demo")[1][0].config.data.max_train_examples == 1000


def test_builtin_causal_lm_recipe_prunes_then_exports_and_compares_with_the_teacher(tmp_path):
    from lmcompress.pipeline import builtin_recipes, parse
    from lmcompress.config import load_yaml

    name, steps = parse(load_yaml(builtin_recipes()["causal-lm"]), "causal-lm", out=str(tmp_path))
    assert [s.stage for s in steps] == ["prune-lm", "export", "compare"]
    pruned, gguf, report = steps
    assert pruned.config.model == "smollm2-135m" and pruned.config.baseline and pruned.config.layers == 20
    assert gguf.config.model == str(tmp_path / "pruned") and gguf.config.format == "gguf"
    assert report.config.runs == ["smollm2-135m", str(tmp_path / "pruned"), str(tmp_path / "gguf")]


def test_builtin_general_distillation_recipe_starts_task_distillation_from_the_general_student(tmp_path):
    from lmcompress.config import load_yaml
    from lmcompress.pipeline import builtin_recipes, parse

    _, steps = parse(load_yaml(builtin_recipes()["general-distillation"]), "general-distillation", out=str(tmp_path))
    by_name = {s.name: s for s in steps}
    assert by_name["general"].stage == "distill-lm" and by_name["general"].config.loss.alpha == 1.0
    assert by_name["student"].config.student == str(tmp_path / "general")
    assert by_name["student"].config.teacher == by_name["sliced"].config.teacher == str(tmp_path / "teacher")
    assert by_name["student"].config.loss == by_name["sliced"].config.loss


def test_builtin_chinese_ner_recipe_chains_pretraining_ner_and_distillation(tmp_path):
    from lmcompress.config import load_yaml
    from lmcompress.pipeline import builtin_recipes, parse

    _, steps = parse(load_yaml(builtin_recipes()["chinese-ner"]), "chinese-ner", out=str(tmp_path))
    assert [s.stage for s in steps] == ["pretrain", "finetune", "distill", "compare"]
    bert, teacher, student, _ = steps
    assert bert.config.chinese_words == "jieba" and bert.config.train_tokenizer == 8000
    assert teacher.config.model == str(tmp_path / "bert") and teacher.config.data.data == "peoples-daily-ner"
    assert student.config.teacher == str(tmp_path / "teacher")
