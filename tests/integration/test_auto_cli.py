"""`lmcompress auto` on the tiny teacher run: the search hands back a report with a chosen row and a model in
OUT/best, re-running continues instead of redoing, and bad targets are one line."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from .cli_helpers import one_error_line, run_cli

# a speed target every shape meets, so the search trains what it shortlists; torch: no ONNX export (fast)
SEARCH = ["--min-speedup", "0.01", "--backend", "torch", "--shortlist", "1", "--screen-rows", "64", "--epochs", "1",
          "--time-budget", "20m", "--quiet"]


@pytest.fixture(scope="module")
def auto_run(tiny_teacher_run, tmp_path_factory):
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("auto") / "search"
    assert main(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), *SEARCH]) == 0
    return out


def test_auto_hands_back_a_report_with_the_chosen_row_and_the_model(auto_run):
    report = json.loads((auto_run / "report" / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert report["chosen"] in names[1:]
    search = report["auto"]
    assert isinstance(search["target_met"], bool) and search["verdict"].startswith(("target met", "target not met"))
    trained = [c for c in search["candidates"] if c["trained"]]
    assert len(trained) == len(names) - 1 == 2  # one shape (the biggest fast enough) and the static student
    assert {c["shape"] for c in trained} >= {"static"}
    assert all(0 < c["validation_retention"] for c in trained)
    assert [x["row"] for x in search["latency_check"]] == names[1:]
    assert (auto_run / "report" / "candidates.png").stat().st_size > 0
    assert "## auto: the search" in (auto_run / "report" / "report.md").read_text()
    chosen = next(c for c in search["candidates"] if c["name"] in report["chosen"])
    if chosen["shape"] != "static":
        AutoModelForSequenceClassification.from_pretrained(auto_run / "best")  # plain HF checkpoint
    shapes = json.loads((auto_run / "shapes.json").read_text())
    assert shapes["teacher_ms"] > 0 and {s["layers"] for s in shapes["shapes"] if not s["static"]} == {1, 2}
    events = [json.loads(line)["event"] for line in (auto_run / "search.jsonl").read_text().splitlines()]
    assert events[0] == "measured" and events[-1] == "chosen" and "trained" in events


def test_auto_rerun_continues_instead_of_redoing(auto_run, tiny_teacher_run, capsys):
    students = sorted(auto_run.glob("candidates/*/student/model.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in students}
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(auto_run),
                            *[a for a in SEARCH if a != "--quiet"]], capsys)
    assert code == 0, err
    assert "reusing shapes.json" in err and "complete, skipped" in err
    assert {p: p.stat().st_mtime_ns for p in students} == before


@pytest.mark.parametrize("flags, fragment", [
    (["--min-speedup", "10", "--max-latency-ms", "5"], "exactly one speed target"),
    (["--min-speedup", "10", "--batch-size", "8"], "batch_size must be 1 or 32"),
    (["--min-speedup", "10", "--time-budget", "soon"], "use minutes"),
    (["--min-speedup", "100000", "--backend", "torch", "--quiet"], "no student shape reaches"),
])
def test_auto_bad_targets_are_one_line(tiny_teacher_run, tmp_path, capsys, flags, fragment):
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(tmp_path / "s"), *flags], capsys)
    assert code != 0
    one_error_line(err, fragment)
    assert not (tmp_path / "s" / "best").exists()


def test_auto_refuses_a_folder_that_holds_something_else(tiny_teacher_run, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(tmp_path / "s"),
                            "--min-speedup", "2"], capsys)
    assert code == 1
    one_error_line(err, "holds no auto search")


def test_auto_rerun_with_other_training_options_is_refused(auto_run, tiny_teacher_run, capsys):
    flags = [a if a != "1" else "2" for a in SEARCH]  # --epochs 2
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(auto_run), *flags], capsys)
    assert code == 1
    one_error_line(err, "holds a search made with other options (epochs 1.0 -> 2.0)", "--overwrite")


def test_auto_refuses_an_out_folder_holding_the_teacher(tiny_teacher_run, capsys):
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(tiny_teacher_run.parent),
                            "--min-speedup", "2", "--overwrite"], capsys)
    assert code == 1
    one_error_line(err, "holds the teacher")
    assert (tiny_teacher_run / "config.json").is_file()


def test_auto_is_not_a_recipe_step(tiny_teacher_run, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsteps:\n  - {{name: a, stage: auto, teacher: {tiny_teacher_run}, min_speedup: 2}}\n")
    code, _, err = run_cli(["run", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    one_error_line(err, "auto is a search of its own")


def test_scoring_does_not_change_the_callers_data_config(tiny_teacher_run, sentiment_csv, tmp_path):
    from lmcompress.config import DataConfig, EvaluateConfig
    from lmcompress.stages import STAGES

    data = DataConfig(data=str(sentiment_csv), max_length=32, max_train_examples=10)
    STAGES["evaluate"].run(EvaluateConfig(model=str(tiny_teacher_run), split="validation", latency=False,
                                          out=str(tmp_path), data=data))
    assert data.max_train_examples == 10  # auto passes its config on to the candidates' training steps
