"""Extractive question answering through the CLI on a tiny model: finetune -> evaluate -> distill -> compare."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import FILLER, NEGATIVE, POSITIVE
from tests.integration.cli_helpers import (SHRINK_STAGES, cached_distill_matches_live, one_error_line, run_cli,
                                          shrink_keeps_the_task)


def toy_squad(articles: int, seed: int = 0) -> dict:
    """SQuAD v1.1-format toy: each context holds one word of the POSITIVE list (half the time followed by 'zed',
    which splits into sub-tokens) and one of the NEGATIVE list among 20-45 filler words; 'which was good' asks for
    the first, 'which was bad' for the second. Contexts run past a 32-token window, so answers sit in later windows."""
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(3):
            words = [rng.choice(FILLER) for _ in range(rng.randint(20, 45))]
            good = rng.choice(POSITIVE) + (" zed" if rng.random() < 0.5 else "")
            bad = rng.choice(NEGATIVE)
            i, j = sorted(rng.sample(range(len(words)), 2))
            words.insert(j, "\0B")
            words.insert(i, "\0G")
            context = " ".join(words).replace("\0G", good).replace("\0B", bad)
            qas = [{"id": f"{a}-{p}-{kind}", "question": f"which was {kind}",
                    "answers": [{"text": answer, "answer_start": context.index(answer)}]}
                   for kind, answer in (("good", good), ("bad", bad))]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "toy-squad.json"
    path.write_text(json.dumps(toy_squad(70)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qa_teacher(tiny_bert_dir, squad_file, tmp_path_factory):
    from lmcompress.cli import main

    out = tmp_path_factory.mktemp("qa-runs") / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--data", str(squad_file), "--out", str(out),
                 "--epochs", "15", "--batch-size", "16", "--learning-rate", "5e-3", "--max-length", "32",
                 "--doc-stride", "8", "--quiet"]) == 0
    return out


def test_finetune_finds_answers_and_evaluate_reproduces_them(qa_teacher, capsys):
    metrics = json.loads((qa_teacher / "metrics.json").read_text())
    assert metrics["task"] == "question-answering" and metrics["main_metric"] == "f1"
    assert set(metrics["metrics"]) == {"exact_match", "f1"}
    assert metrics["metrics"]["f1"] > 0.9, metrics  # the answer is whichever word comes from the asked-for list
    config = json.loads((qa_teacher / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    manifest = json.loads((qa_teacher / "lmcompress.json").read_text())
    assert manifest["config"]["data"]["doc_stride"] == 8
    code, stdout, err = run_cli(["evaluate", "--model", str(qa_teacher), "--no-latency", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["metrics"] == metrics["metrics"]


def test_distilled_qa_student_and_compare(qa_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(qa_teacher), "--student", "layers=1", "--out", str(out),
                            "--hidden-weight", "1", "--epochs", "10", "--batch-size", "16", "--learning-rate", "5e-3",
                            "--quiet"], capsys)
    assert code == 0, err
    student = json.loads((out / "metrics.json").read_text())
    assert student["task"] == "question-answering" and student["metrics"]["f1"] > 0.6, student
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["config"]["data"]["doc_stride"] == 8  # the teacher's windowing, reused
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(qa_teacher), str(out), "--out", str(report), "--latency-repeats", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert [r["metric"] for r in rows] == ["f1", "f1"]
    assert rows[1]["value"] == pytest.approx(student["metrics"]["f1"], abs=1e-6)


def test_span_kd_alone_teaches_a_random_student(qa_teacher, tmp_path, capsys):
    """alpha 0: no answer position reaches the student, only the teacher's start/end distributions; the student
    starts from random weights, so whatever it finds it learnt from the span KD."""
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(qa_teacher), "--student", "bert-2l-32h-4a", "--out", str(out),
                            "--alpha", "0", "--epochs", "15", "--batch-size", "16", "--learning-rate", "5e-3",
                            "--temperature", "2", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["metrics"]["f1"] > 0.8


@pytest.mark.parametrize("args,max_drop", SHRINK_STAGES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_prune_quantize_and_export_keep_question_answering(qa_teacher, tmp_path, capsys, args, max_drop):
    shrink_keeps_the_task(qa_teacher, tmp_path, capsys, args, max_drop)


def test_onnx_graph_names_the_span_outputs(qa_teacher, tmp_path, capsys):
    import onnx

    code, _, err = run_cli(["export", "--model", str(qa_teacher), "--out", str(tmp_path / "onnx"), "--quiet"], capsys)
    assert code == 0, err
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    assert [o.name for o in graph.output] == ["start_logits", "end_logits"]


def test_albert_students_say_they_need_a_sequence_teacher(qa_teacher, tmp_path, capsys):
    code, _, err = run_cli(["distill", "--teacher", str(qa_teacher), "--student", "albert;embedding=16", "--out",
                            str(tmp_path / "out"), "--quiet"], capsys)
    assert code != 0
    one_error_line(err, "ALBERT students are built for sequence-classification")
    assert not (tmp_path / "out").exists()


def test_bad_squad_files_get_one_line(tiny_bert_dir, tmp_path, capsys):
    wrong_offset = toy_squad(4)
    wrong_offset["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    cases = {
        "offset.json": (json.dumps(wrong_offset), "not found at its answer_start"),
        "empty.json": (json.dumps({"version": "1.1", "data": []}), "holds no questions"),
        "noctx.jsonl": (json.dumps({"question": "q", "context": "", "answers": []}) + "\n",
                        "'question' and 'context' must be non-empty strings"),
    }
    for name, (text, fragment) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        code, _, err = run_cli(["finetune", "--model", str(tiny_bert_dir), "--data", str(path), "--out",
                                str(tmp_path / "out"), "--task", "question-answering", "--quiet"], capsys)
        assert code != 0, name
        one_error_line(err, fragment)
        assert not (tmp_path / "out").exists()


def test_a_classifier_is_not_scored_on_qa_data(tiny_teacher_run, squad_file, capsys):
    code, _, err = run_cli(["evaluate", "--model", str(tiny_teacher_run), "--data", str(squad_file), "--no-latency"],
                           capsys)
    assert code != 0
    one_error_line(err, "holds a sequence-classification model but the data is a question-answering task")


def test_span_logits_are_cached_and_read_back_exactly(qa_teacher, tmp_path, capsys):
    cached_distill_matches_live(qa_teacher, tmp_path, capsys, ["--student", "layers=1", "--epochs", "2",
                                                               "--batch-size", "16"])


def test_load_answers_what_evaluate_decodes(qa_teacher, tmp_path, capsys):
    """lmcompress.load on a QA run: per test question the span evaluate decodes, with its offsets and a probability;
    `predict` writes the same from a file with question and context columns."""
    import lmcompress
    from lmcompress.config import DataConfig
    from lmcompress.data import load_task
    from lmcompress.backends import load_run_model
    from lmcompress.models.load import load_tokenizer
    from lmcompress.runkinds.task import predict_answers
    from lmcompress.runs.manifest import data_config_for

    task = load_task(data_config_for(DataConfig(), qa_teacher))
    frame = task.splits["test"]
    expected = predict_answers(load_run_model(qa_teacher, None, False, task="question-answering"),
                               load_tokenizer(qa_teacher), frame, 32, 64, task.qa_options, allow_empty=False)
    predictor = lmcompress.load(str(qa_teacher), batch_size=5)
    answers = predictor(frame["question"].tolist(), frame["context"].tolist())
    assert [a["answer"] for a in answers] == expected
    for answer, context in zip(answers, frame["context"]):
        assert context[answer["start"]:answer["end"]] == answer["answer"] and 0.0 < answer["score"] <= 1.0
    with pytest.raises(lmcompress.LmcError, match="give a context"):
        predictor(["who?"])
    # a run trained with unanswerable questions may answer nothing: the same rule as evaluate's decoder
    options, _ = predictor.qa_settings
    predictor.__dict__["qa_settings"] = (options, True)
    may_be_empty = predict_answers(load_run_model(qa_teacher, None, False, task="question-answering"),
                                   load_tokenizer(qa_teacher), frame, 32, 64, task.qa_options, allow_empty=True)
    assert [a["answer"] for a in predictor(frame["question"].tolist(), frame["context"].tolist())] == may_be_empty

    source = tmp_path / "questions.jsonl"
    frame[["question", "context"]].to_json(source, orient="records", lines=True)
    code, _, err = run_cli(["predict", "--model", str(qa_teacher), "--data", str(source), "--out",
                            str(tmp_path / "answers.jsonl")], capsys)
    assert code == 0, err
    written = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [w["answer"] for w in written] == expected
