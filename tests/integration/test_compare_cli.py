"""compare through the CLI on a tiny teacher and a distilled student."""

from __future__ import annotations

import json
import statistics

import pytest

from lmcompress.cli import main


@pytest.fixture(scope="module")
def student_run(tiny_teacher_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("students") / "student-1l"
    assert main(["distill", "--teacher", str(tiny_teacher_run), "--student", "layers=1", "--out", str(out),
                 "--epochs", "2", "--batch-size", "16", "--learning-rate", "2e-3", "--no-cache", "--quiet"]) == 0
    return out


def test_compare_writes_the_report(tiny_teacher_run, student_run, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["compare", str(tiny_teacher_run), str(student_run), "--out", str(out), "--latency-repeats", "3",
                 "--threads", "1", "--quiet"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "report.json", "pareto.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"] == "teacher"
    teacher, student = report["rows"]
    for row in report["rows"]:
        assert {"name", "params", "size_mb", "metric", "value", "retention", "latency_ms_b1", "latency_ms_b32",
                "speedup_b1", "speedup_b32"} <= set(row)
    assert teacher["retention"] == 1.0 and teacher["speedup_b32"] == 1.0 and teacher["metric"] == "accuracy"
    assert student["params"] < teacher["params"]
    assert student["retention"] == pytest.approx(student["value"] / teacher["value"], abs=1e-4)
    # timed side by side: the speedup is the median of the per-round ratios (report.json keeps every round)
    ratios = [t / s for t, s in zip(teacher["latency_rounds_ms_b32"], student["latency_rounds_ms_b32"])]
    assert student["speedup_b32"] == pytest.approx(statistics.median(ratios), rel=1e-2)
    # the student's own metrics.json was measured on the same rows: same accuracy
    assert student["value"] == pytest.approx(json.loads((student_run / "metrics.json").read_text())["metrics"]["accuracy"])
    assert report["setup"]["threads"] == 1 and report["data"]["sizes"]["test"] == 24
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "student-1l" in html
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| teacher |" in (out / "report.md").read_text()
    assert "student-1l" in capsys.readouterr().out  # the terminal table


def test_compare_names_the_rows_as_told(tiny_teacher_run, student_run, tmp_path):
    out = tmp_path / "report"
    assert main(["compare", str(student_run), str(tiny_teacher_run), "--names", "small, big", "--teacher", "big",
                 "--out", str(out), "--latency-repeats", "1", "--threads", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"] == "big" and [row["name"] for row in report["rows"]] == ["small", "big"]
    assert "| small |" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--teacher", "nobody"], "is not one of the runs"),
    (["--names", "a,b"], "--names needs 1 distinct non-empty names"),
    (["EXTRA_NOT_A_RUN"], "is not a run directory"),
])
def test_compare_bad_input(tiny_teacher_run, tmp_path, capsys, args, message):
    extra = [str(tmp_path / "missing")] if args == ["EXTRA_NOT_A_RUN"] else args
    code = main(["compare", str(tiny_teacher_run), *extra, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "r").exists()
