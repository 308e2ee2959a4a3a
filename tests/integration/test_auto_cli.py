"""`lmcompress auto` on the tiny teacher run: the search hands back a report with a chosen row and a model in
OUT/best, re-running continues instead of redoing, and bad targets are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from .cli_helpers import one_error_line, run_cli

# a speed target every shape meets, so the search trains what it shortlists; torch: no ONNX export (fast)
SEARCH = ["--min-speedup", "0.01", "--backend", "torch", "--shortlist", "1", "--screen-rows", "64", "--epochs", "1",
          "--time-budget", "20m", "--quiet"]


AUGMENT_TEXTS = 24  # unlabelled in-domain texts given with --augment


@pytest.fixture(scope="module")
def augment(tmp_path_factory) -> list[str]:
    """`--augment FILE`, as every run of the module's search passes it (a re-run with other options is refused)."""
    from tests.conftest import make_sentiment_rows

    extra = tmp_path_factory.mktemp("augment") / "unlabelled.txt"
    texts = [f"{r['text']} (unlabelled {i})" for i, r in enumerate(make_sentiment_rows(AUGMENT_TEXTS, seed=11))]
    extra.write_text("\n\n".join(texts) + "\n")  # none equals a held-out row
    return ["--augment", str(extra)]


@pytest.fixture(scope="module")
def auto_run(tiny_teacher_run, augment, tmp_path_factory):
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("auto") / "search"
    with pytest.MonkeyPatch.context() as patch:  # the module's tests are about the transformer candidates
        _static_student_misses(patch)
        assert main(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), *augment, *SEARCH]) == 0
    return out


def test_auto_hands_back_a_report_with_the_chosen_row_and_the_model(auto_run):
    report = json.loads((auto_run / "report" / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert report["chosen"] in names[1:]
    search = report["auto"]
    assert isinstance(search["target_met"], bool) and search["verdict"].startswith(("target met", "target not met"))
    trained = [c for c in search["candidates"] if c["trained"]]
    static = next(c for c in search["candidates"] if c["shape"] == "static")
    assert static["trained"] and static["status"] == "trained"  # made to miss the target (see auto_run)
    assert len(trained) == len(names) - 1 == 2  # one shape (the biggest fast enough) and the static student
    events = [json.loads(line) for line in (auto_run / "search.jsonl").read_text().splitlines()]
    order = [(e["event"], e.get("shape")) for e in events if e["event"] in ("trained", "screened")]
    assert order[0] == ("trained", "static") and order[1][0] == "screened"  # made before any screening
    assert all(0 < c["validation_retention"] for c in trained)
    assert all(c["measured_speedup"] > 0 and c["measured_latency_ms"] > 0 for c in trained)  # re-timed as trained
    assert [x["row"] for x in search["latency_check"]] == names[1:]
    assert (auto_run / "report" / "candidates.png").stat().st_size > 0
    assert "## auto: the search" in (auto_run / "report" / "report.md").read_text()
    assert "| measured as trained | start (validation) |" in (auto_run / "report" / "report.md").read_text()
    screened = [c for c in search["candidates"] if (Path(c["folder"]) / "screen").is_dir()]
    assert screened
    for c in screened:  # where each started, before distillation, from the screen's record (same teacher scale)
        train = json.loads((Path(c["folder"]) / "screen" / "lmcompress.json").read_text())["train"]
        best = max(h["accuracy"] for h in train["history"])
        assert c["start_score"] * best == pytest.approx(c["screen_score"] * train["start"]["accuracy"])
    assert names == ["teacher"] + [c["name"] for c in trained]  # rows named after the candidates
    chosen = next(c for c in search["candidates"] if c["name"] == report["chosen"])
    if chosen["shape"] != "static":
        AutoModelForSequenceClassification.from_pretrained(auto_run / "best")  # plain HF checkpoint
    shapes = json.loads((auto_run / "shapes.json").read_text())
    assert shapes["teacher_ms"] > 0 and {s["layers"] for s in shapes["shapes"] if not s["static"]} == {1, 2}
    events = [json.loads(line)["event"] for line in (auto_run / "search.jsonl").read_text().splitlines()]
    assert events[0] == "measured" and events[-1] == "chosen" and "trained" in events


def test_the_report_says_where_each_model_trained_and_that_every_timing_ran_on_the_cpu(auto_run, tiny_teacher_run):
    import torch

    from lmcompress.machine import describe_processor, processor
    from lmcompress.training.loop import device_name, resolve_precision

    precision = {"no": "fp32"}.get(resolve_precision("auto"), "bf16")  # what this machine's default autocast is
    device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = json.loads((tiny_teacher_run / "lmcompress.json").read_text())["train"]
    assert (teacher["device"], teacher["precision"]) == (device, precision)
    where = next(line for line in (auto_run / "report" / "report.md").read_text().splitlines()
                 if line.startswith("Where: "))
    assert f"the teacher was trained on {device}, {precision}" in where
    search = json.loads((auto_run / "report" / "report.json").read_text())["auto"]
    assert search["where"] == where  # the same line in report.json
    students = [c for c in search["candidates"] if c["trained"]]
    assert any(c["shape"] == "static" for c in students)  # always trained: a fit of its own on the teacher's logits
    for c in students:
        train = json.loads((Path(c["folder"]) / "student" / "lmcompress.json").read_text())["train"]
        assert (train["device"], train["precision"]) == (device, precision) and c["name"] in where
    assert f"trained (with the teacher's passes) on {device}, {precision}" in where
    assert where.endswith(f"threads, {describe_processor(processor())}).") and "Every timing ran on the CPU (" in where


def test_auto_labels_the_augment_text_it_has_time_for_and_says_how_many_rows_each_student_saw(auto_run):
    report = json.loads((auto_run / "report" / "report.json").read_text())
    rows = report["auto"]["rows"]
    planned = json.loads((auto_run / "augmentation.json").read_text())
    assert rows["augmentation_available"] == planned["available"] == AUGMENT_TEXTS  # none equals a held-out row
    assert rows["augmentation"] == planned["rows"] == AUGMENT_TEXTS  # a 20-minute budget fits them all
    students = [m for m in auto_run.glob("candidates/*/student/lmcompress.json") if m.parts[-3] != "static"]
    assert students  # (the static student's table comes from the vocabulary: it learns from no extra text)
    for manifest in students:
        assert json.loads(manifest.read_text())["augmentation"]["rows"] == AUGMENT_TEXTS
    screens = list(auto_run.glob("candidates/*/screen/lmcompress.json"))
    assert screens and all(json.loads(m.read_text()).get("augmentation") is None for m in screens)
    markdown = (auto_run / "report" / "report.md").read_text()
    assert rows["augmentation_source"].startswith("texts of `--augment ")  # given text, not word spans, when any
    assert f"{rows['labelled']:,} + {AUGMENT_TEXTS:,}" in markdown and rows["augmentation_source"] in markdown


def test_without_augment_text_auto_labels_word_spans_of_the_labelled_texts(tiny_teacher_run, tmp_path, capsys,
                                                                           monkeypatch):
    _static_student_misses(monkeypatch)
    out = tmp_path / "search"
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), "--donors", "none",
                            "--augment-spans", "2", *SEARCH], capsys)
    assert code == 0, err
    planned = json.loads((out / "augmentation.json").read_text())
    assert planned["source"] == "word spans of the labelled texts, up to 2 per text"
    assert 0 < planned["rows"] == planned["available"] <= 2 * planned["labelled_rows"]  # a 20-minute budget: all
    students = [m for m in out.glob("candidates/*/student/lmcompress.json") if m.parts[-3] != "static"]
    assert students
    for manifest in students:
        record = json.loads(manifest.read_text())["augmentation"]
        assert record["word_spans"]["spans_per_text"] == 2 and record["rows"] == planned["rows"]
    assert json.loads((out / "request.json").read_text())["augment_spans"] == 2
    report = json.loads((out / "report" / "report.json").read_text())["auto"]["rows"]
    assert report["augmentation"] == planned["rows"] and report["augmentation_source"] == planned["source"]


def test_auto_rerun_continues_instead_of_redoing(auto_run, tiny_teacher_run, augment, capsys, monkeypatch):
    _static_student_misses(monkeypatch)  # as when it was made
    students = sorted(auto_run.glob("candidates/*/student/model.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in students}
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(auto_run), *augment,
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


def test_auto_rerun_with_other_training_options_is_refused(auto_run, tiny_teacher_run, augment, capsys):
    flags = [a if a != "1" else "2" for a in SEARCH]  # --epochs 2
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(auto_run), *augment, *flags],
                           capsys)
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


def test_a_missed_target_trains_the_nearest_miss_further(tiny_teacher_run, tmp_path, monkeypatch):
    from lmcompress.cli import main
    from lmcompress.search import run

    real = run.StageExecutor.round_retention  # every retention halved: the target is missed, so the time left
    monkeypatch.setattr(run.StageExecutor, "round_retention", lambda *a: real(*a) / 2)  # goes to further rounds
    out = tmp_path / "search"
    assert main(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), *SEARCH]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["auto"]["target_met"] is False
    extended = [c for c in report["auto"]["candidates"] if c["rounds"] > 1]
    assert len(extended) == 1 and extended[0]["shape"] != "static"
    c = extended[0]
    folder = out / "candidates" / c["shape"]
    for r in range(2, c["rounds"] + 1):
        recorded = json.loads((folder / f"student-r{r}" / "lmcompress.json").read_text())
        previous = folder / ("student" if r == 2 else f"student-r{r - 1}")
        assert recorded["config"]["student"] == str(previous)
        assert recorded["config"]["train"]["learning_rate"] == pytest.approx(1e-4 * 0.5 ** (r - 1))
        assert (folder / f"validation-r{r}" / "metrics.json").is_file()
    best = folder / ("student" if c["best_round"] == 1 else f"student-r{c['best_round']}")
    assert report["auto"]["deploy"][c["name"]] == str(best)
    rounds = [json.loads(line) for line in (out / "search.jsonl").read_text().splitlines()]
    assert [e["round_retention"] > 0 for e in rounds if e["event"] == "round"] == [True] * (c["rounds"] - 1)


def test_a_named_donor_is_screened_and_trained_beside_the_teacher_s_cut(tiny_teacher_run, own_vocab_encoder, tmp_path,
                                                                          capsys, monkeypatch):
    """`--donors FOLDER`: a pre-trained encoder with its own vocabulary gets a candidate of its own, made from the
    donor (whole here: it is fast enough) and distilled on the teacher's logits only (auto's loss for a donor with
    another vocabulary)."""
    from transformers import AutoTokenizer

    # the donor trains first (else the toy's cut may meet the target first, and the slower donor is not trained)
    monkeypatch.setattr("lmcompress.search.run._training_order", lambda c: 0 if c.shape.origin else 1)
    _static_student_misses(monkeypatch)

    donor = own_vocab_encoder
    out = tmp_path / "search"
    code, _, err = run_cli(["auto", "--teacher", str(tiny_teacher_run), "--out", str(out), *SEARCH, "--donors",
                            str(donor)], capsys)
    assert code == 0, err
    search = json.loads((out / "report" / "report.json").read_text())["auto"]
    (candidate,) = [c for c in search["candidates"] if c["origin"] == "donor donor"]
    assert candidate["name"] == "donor-L2-H32-A4-F128" and candidate["trained"] and candidate["validation_retention"] > 0
    folder = out / "candidates" / candidate["name"]
    screen = json.loads((folder / "screen" / "lmcompress.json").read_text())
    assert screen["config"]["student"] == str(donor) and screen["config"]["loss"]["hidden_weight"] == 0
    assert AutoTokenizer.from_pretrained(folder / "student").get_vocab() == \
        AutoTokenizer.from_pretrained(donor).get_vocab()  # the donor's tokenizer travels with its student
    assert "| donor donor |" in (out / "report" / "report.md").read_text()
    shapes = json.loads((out / "shapes.json").read_text())
    assert {s["name"] for s in shapes["shapes"] if s["origin"]} == {"donor-L1-H32-A4-F128", "donor-L2-H32-A4-F128"}


def _static_student_misses(monkeypatch) -> None:
    """The toy static student, made before any screening, may keep the retention and so end a search before its
    transformer candidates are screened: these tests are about those candidates, so it is made to miss."""
    from lmcompress.search.state import Search

    meets = Search.meets_target
    monkeypatch.setattr(Search, "meets_target", lambda self, c: not c.shape.static and meets(self, c))


def test_an_albert_teacher_is_searched_over_its_depth_and_width(sentiment_csv, tiny_tokenizer_dir, tmp_path, capsys,
                                                               monkeypatch):
    """ALBERT shares one layer across depth: its students are the shared layer applied fewer times, narrowed or not
    (once for every pass), cut by `prune --recovery none` like any narrowable family and then distilled."""
    _static_student_misses(monkeypatch)
    teacher = tmp_path / "albert-teacher"
    code, _, err = run_cli(["finetune", "--model", "albert-2l-32h-4a", "--tokenizer", str(tiny_tokenizer_dir),
                            "--data", str(sentiment_csv), "--out", str(teacher), "--epochs", "2", "--batch-size", "16",
                            "--learning-rate", "3e-3", "--max-length", "32", "--quiet"], capsys)
    assert code == 0, err
    out = tmp_path / "search"
    code, _, err = run_cli(["auto", "--teacher", str(teacher), "--out", str(out), *SEARCH, "--donors", "none"], capsys)
    assert code == 0, err
    search = json.loads((out / "report" / "report.json").read_text())["auto"]
    shapes = json.loads((out / "shapes.json").read_text())["shapes"]
    assert {(s["layers"], s["hidden"]) for s in shapes if not s["static"]} == {(d, h) for d in (1, 2) for h in (8, 16, 32)}
    (cut,) = [c for c in search["candidates"] if c["origin"] == "teacher cut"]
    assert cut["shape"] == "L1-H32-A4-F128"  # (its parameters tie with the teacher's: the one layer is kept whole)
    folder = out / "candidates" / cut["name"]
    init = json.loads((folder / "init" / "lmcompress.json").read_text())
    assert init["stage"] == "prune" and init["pruning"]["kept_layers"] == [1]  # one pass, paired with the last
    screen = json.loads((folder / "screen" / "lmcompress.json").read_text())
    assert screen["config"]["student"] == str(folder / "init") and screen["student"]["layers"] == 1
