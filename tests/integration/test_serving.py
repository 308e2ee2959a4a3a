"""`lmcompress.load`, `predict` and `serve`: the same answers as `evaluate` for every run format, and a real uvicorn
server driven over HTTP on localhost (bad requests, SIGTERM with requests in flight, two servers on one port)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.cli_helpers import one_error_line, run_cli

FORMATS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "static")


@pytest.fixture(scope="module")
def run_formats(tiny_teacher_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny teacher in every format a run can take (each made by the real CLI)."""
    from lmcompress.cli import main

    root = tmp_path_factory.mktemp("formats")
    commands = {
        "onnx": ["export", "--format", "onnx"],
        "onnx-int8": ["quantize", "--method", "onnx-int8"],
        "openvino": ["export", "--format", "openvino"],
        "openvino-int8": ["quantize", "--method", "openvino-int8", "--calibration-examples", "12"],
    }
    runs = {"torch": tiny_teacher_run}
    for name, command in commands.items():
        assert main([*command, "--model", str(tiny_teacher_run), "--out", str(root / name), "--quiet"]) == 0
        runs[name] = root / name
    assert main(["distill", "--teacher", str(tiny_teacher_run), "--student", "static;dim=16", "--out",
                 str(root / "static"), "--epochs", "12", "--batch-size", "16", "--quiet"]) == 0
    runs["static"] = root / "static"
    return runs


def evaluate_argmax(folder: Path) -> tuple[list[str], list[str], float]:
    """What `evaluate` computes on the run's test rows: (texts, predicted label names, accuracy)."""
    from lmcompress.backends import load_run_model
    from lmcompress.config import DataConfig
    from lmcompress.data import load_task
    from lmcompress.data.tokenize import collator, tokenize_frame
    from lmcompress.models.load import load_tokenizer
    from lmcompress.runkinds.task import predict
    from lmcompress.runs.manifest import data_config_for
    from lmcompress.stages.evaluate import evaluate_run
    from lmcompress.config import EvaluateConfig

    task = load_task(data_config_for(DataConfig(), folder))
    tokenizer = load_tokenizer(folder)
    model = load_run_model(folder, task.labels, False)
    frame = task.splits["test"]
    logits, _ = predict(model, tokenize_frame(frame, tokenizer, 32), collator(tokenizer), 64)
    accuracy = evaluate_run(EvaluateConfig(model=str(folder), latency=False,
                                           out=str(folder.parent / f"{folder.name}-eval")))["metrics"]["accuracy"]
    return frame["text"].tolist(), [task.labels[i] for i in logits.argmax(-1)], accuracy


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_predicts_what_evaluate_scores(run_formats, fmt):
    import lmcompress

    texts, expected, accuracy = evaluate_argmax(run_formats[fmt])
    predictor = lmcompress.load(str(run_formats[fmt]), threads=1, batch_size=7)  # batches unlike evaluate's
    answers = predictor(texts)
    assert [a["label"] for a in answers] == expected
    assert all(0.5 <= a["score"] <= 1.0 for a in answers)  # the winning probability of two labels
    card = predictor.card
    gold = [card.labels[r["label"]] for r in _test_rows(run_formats["torch"])]
    assert np.mean([a["label"] == g for a, g in zip(answers, gold)]) == pytest.approx(accuracy)
    assert (card.task, card.labels, card.max_length) == ("text-classification", ["neg", "pos"], 32)
    runtime = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino-int8": "openvino"}.get(fmt, fmt)
    assert (card.runtime, card.precision) == (runtime, "int8" if fmt.endswith("int8") else "fp32")
    alone = predictor(texts[0])  # one text in, one answer out (dynamic int8's ranges move with the batch's rows)
    assert alone["label"] == answers[0]["label"] and alone["score"] == pytest.approx(answers[0]["score"], abs=0.01)


def _test_rows(folder: Path) -> list[dict]:
    from lmcompress.config import DataConfig
    from lmcompress.data import load_task
    from lmcompress.runs.manifest import data_config_for

    return load_task(data_config_for(DataConfig(), folder)).splits["test"].to_dict("records")


def test_predict_cli_writes_every_row_as_load_answers(run_formats, tmp_path, capsys):
    import lmcompress

    rows = _test_rows(run_formats["torch"])
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(len(rows)), "review": [r["text"] for r in rows]}).to_csv(source, index=False)
    expected = lmcompress.load(str(run_formats["onnx-int8"]))([r["text"] for r in rows])
    out = tmp_path / "predictions.jsonl"
    code, stdout, err = run_cli(["predict", "--model", str(run_formats["onnx-int8"]), "--data", str(source), "--out",
                                 str(out)], capsys)
    assert code == 0, err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{"label": w["label"], "score": pytest.approx(w["score"])} for w in written] == expected
    assert [w["review"] for w in written] == [r["text"] for r in rows]  # the review column was found by its name
    assert [w["id"] for w in written] == [str(i) for i in range(len(rows))]  # every input column is kept, as read
    assert re.search(rf"predicted {len(rows)} rows in .* texts/s", stdout)
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside the output

    csv_out = tmp_path / "predictions.csv"
    code, _, err = run_cli(["predict", "--model", str(run_formats["static"]), "--data", str(source), "--out",
                            str(csv_out), "--text-column", "review"], capsys)
    assert code == 0, err
    table = pd.read_csv(csv_out)
    assert list(table.columns) == ["id", "review", "label", "score"] and len(table) == len(rows)
    assert table["label"].tolist() == [a["label"] for a in lmcompress.load(str(run_formats["static"]))(
        [r["text"] for r in rows])]


def test_predict_reads_folders_and_standard_input(tiny_teacher_run, tmp_path, capsys, monkeypatch):
    import io

    folder = tmp_path / "inbox"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "one.txt").write_text("good fun film\n", encoding="utf-8")
    (folder / "two.txt").write_text("dull and weak", encoding="utf-8")
    out = tmp_path / "folder.jsonl"
    code, _, err = run_cli(["predict", "--model", str(tiny_teacher_run), "--data", str(folder), "--out", str(out)],
                           capsys)
    assert code == 0, err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(w["file"], w["text"]) for w in written] == [("a/one.txt", "good fun film"), ("two.txt", "dull and weak")]

    monkeypatch.setattr(sys, "stdin", io.StringIO("superb story\n\nboring plot\n"))
    code, _, err = run_cli(["predict", "--model", str(tiny_teacher_run), "--data", "-", "--out",
                            str(tmp_path / "stdin.jsonl")], capsys)
    assert code == 0, err
    assert [json.loads(line)["text"] for line in (tmp_path / "stdin.jsonl").read_text().splitlines()] == [
        "superb story", "boring plot"]


def test_predict_bad_input_is_one_line_and_writes_nothing(tiny_teacher_run, tmp_path, capsys):
    empty_row = tmp_path / "empty_row.jsonl"
    empty_row.write_text('{"text": "good"}\n{"text": null}\n', encoding="utf-8")
    two_columns = tmp_path / "two.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(two_columns, index=False)
    existing = tmp_path / "exists.jsonl"
    existing.write_text("keep\n", encoding="utf-8")
    cases = [
        (["--data", str(empty_row), "--out", str(tmp_path / "o.jsonl")], "row 2: the text is missing"),
        (["--data", str(two_columns), "--out", str(tmp_path / "o.jsonl")], "cannot tell which column"),
        (["--data", str(two_columns), "--out", str(tmp_path / "o.jsonl"), "--text-column", "c"], "'c' not found"),
        (["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o.jsonl")], "does not exist"),
        (["--data", str(empty_row), "--out", str(existing)], "pass --overwrite"),
        (["--data", str(empty_row), "--out", str(tmp_path / "o.parquet")], "must end in .jsonl or .csv"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli(["predict", "--model", str(tiny_teacher_run), *args], capsys)
        assert code != 0
        one_error_line(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_row.jsonl", "exists.jsonl", "two.csv"]
    assert existing.read_text() == "keep\n"
    code, _, err = run_cli(["predict", "--model", str(tmp_path), "--data", str(empty_row), "--out",
                            str(tmp_path / "o.jsonl")], capsys)
    one_error_line(err, "not a run directory")


def test_load_serves_embeddings_and_generation(tiny_bert_dir, clm_teacher, tmp_path, capsys):
    import lmcompress

    encoder = lmcompress.load(str(tiny_bert_dir))  # a plain encoder: sentence embeddings
    vectors = encoder(["good film", "a dull and boring plot"])
    assert encoder.card.task == "sentence-embedding" and len(vectors) == 2 and len(vectors[0]) == 32
    assert vectors[0] != vectors[1]
    generator = lmcompress.load(str(clm_teacher))
    answer = generator.generate("The movie", max_new_tokens=5)
    assert generator.card.task == "text-generation" and answer["generated_text"].startswith("The movie")
    assert len(answer["generated_text"]) > len("The movie")
    with pytest.raises(lmcompress.LmcError, match="max_new_tokens"):
        generator.generate("The movie", max_new_tokens=0)
    positions = generator.card.max_length  # the model's positions (n_positions of the tiny GPT-2)
    with pytest.raises(lmcompress.LmcError, match=f"passes the model's {positions} positions"):
        generator.generate("The movie " * positions, max_new_tokens=8)

    source = tmp_path / "with_gold.csv"
    pd.DataFrame({"text": ["good film", "dull plot"], "label": ["pos", "neg"]}).to_csv(source, index=False)
    code, stdout, err = run_cli(["predict", "--model", str(tiny_bert_dir), "--data", str(source), "--out",
                                 str(tmp_path / "vectors.jsonl"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 2  # --json: stdout holds the JSON alone
    written = [json.loads(line) for line in (tmp_path / "vectors.jsonl").read_text().splitlines()]
    assert [w["label"] for w in written] == ["pos", "neg"]  # an input column no answer field collides with
    assert written[0]["embedding"] == pytest.approx(vectors[0], abs=1e-5)


# ------------------------------------------------------------------------------------------------------------ serve


@contextlib.contextmanager
def server(run: Path, *args: str):
    """`lmcompress serve` in its own process on a free port -> (process, base URL); stopped at the end."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="300")
    process = subprocess.Popen([sys.executable, "-m", "lmcompress", "serve", "--model", str(run), "--port", "0",
                                "--threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        line = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert found, line + process.stderr.read()
        base = found.group(1)
        for _ in range(100):  # the socket is bound before the model loads: wait until the app answers
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


# (what is wrong, method, path, headers, body, expected status): the bad requests a server must answer and survive
BAD_REQUESTS = [
    ("body is not JSON", "POST", "/predict", {}, b'{"texts": ["good"', 400),
    ("empty body", "POST", "/predict", {}, b"", 400),
    ("body is not UTF-8", "POST", "/predict", {}, b'{"text": "\xff\xfe"}', 400),
    ("body is a JSON list", "POST", "/predict", {}, b'["good"]', 422),
    ("body is a JSON string", "POST", "/predict", {}, b'"good"', 422),
    ("no text field", "POST", "/predict", {}, b'{"sentences": ["good"]}', 422),
    ("an empty object", "POST", "/predict", {}, b"{}", 422),
    ("both text and texts", "POST", "/predict", {}, b'{"text": "good", "texts": ["bad"]}', 422),
    ("texts is a string", "POST", "/predict", {}, b'{"texts": "good"}', 422),
    ("texts is empty", "POST", "/predict", {}, b'{"texts": []}', 422),
    ("a text is a number", "POST", "/predict", {}, b'{"texts": ["good", 3]}', 422),
    ("a text is null", "POST", "/predict", {}, b'{"texts": [null]}', 422),
    ("text is an object", "POST", "/predict", {}, b'{"text": {"a": 1}}', 422),
    ("a text is blank", "POST", "/predict", {}, b'{"texts": ["good", "   "]}', 422),
    ("too many texts", "POST", "/predict", {}, json.dumps({"texts": ["good"] * 9}).encode(), 422),
    ("a text too long", "POST", "/predict", {}, json.dumps({"text": "good " * 100}).encode(), 422),
    ("pairs for a single-text model", "POST", "/predict", {}, b'{"text": "good", "text_pair": "bad"}', 422),
    ("max_new_tokens for a classifier", "POST", "/predict", {}, b'{"text": "good", "max_new_tokens": 5}', 422),
    ("body over the size limit", "POST", "/predict", {}, json.dumps({"texts": ["good " * 50] * 8}).encode(), 413),
    ("form data instead of JSON", "POST", "/predict", {"content-type": "application/x-www-form-urlencoded"},
     b"text=good", 415),
    ("GET on /predict", "GET", "/predict", {}, None, 405),
    ("POST on /health", "POST", "/health", {}, b"{}", 405),
    ("unknown path", "GET", "/v1/models", {}, None, 404),
]


def test_serve_answers_as_load_and_survives_every_bad_request(run_formats):
    import lmcompress

    rows = [r["text"] for r in _test_rows(run_formats["torch"])][:8]
    expected = lmcompress.load(str(run_formats["openvino-int8"]))(rows)
    with server(run_formats["openvino-int8"], "--max-texts", "8", "--max-chars", "200", "--max-body-bytes",
                "1500") as (_, base):
        answer = httpx.post(f"{base}/predict", json={"texts": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        got = answer.json()["predictions"]
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
        single = httpx.post(f"{base}/predict", json={"text": rows[0]}, timeout=30).json()["predictions"]
        assert single[0]["label"] == expected[0]["label"]
        metadata = httpx.get(f"{base}/metadata").json()
        assert (metadata["runtime"], metadata["precision"], metadata["labels"]) == ("openvino", "int8", ["neg", "pos"])
        assert metadata["processor"]["cores"] >= 1 and metadata["limits"]["max_texts"] == 8

        for what, method, path, headers, body, status in BAD_REQUESTS:
            reply = httpx.request(method, f"{base}{path}", headers={"content-type": "application/json", **headers},
                                  content=body, timeout=30)
            assert reply.status_code == status, (what, reply.status_code, reply.text)
            assert reply.json()["error"], what  # a JSON error that says what is wrong
        chunked = httpx.post(f"{base}/predict", content=iter([b'{"texts": ["', b"good " * 400, b'"]}']), timeout=30)
        assert chunked.status_code == 413  # no Content-Length: the limit holds while the body streams in
        assert httpx.post(f"{base}/predict", json={"texts": rows}, timeout=30).json()["predictions"] == got
        metrics = httpx.get(f"{base}/metrics").text
        assert re.search(r'lmcompress_requests_total\{status="422"\} 1[0-9]\.0', metrics)
        assert "process_resident_memory_bytes" in metrics


def test_serve_batches_concurrent_requests_and_finishes_them_on_sigterm(run_formats):
    rows = [r["text"] for r in _test_rows(run_formats["torch"])]
    with server(run_formats["torch"], "--max-wait-ms", "1500", "--max-batch", "64") as (process, base):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(httpx.post, f"{base}/predict", json={"texts": rows[i:i + 3]}, timeout=60)
                       for i in range(0, 24, 3)]
            time.sleep(0.7)  # every request is now waiting for the batch to fill (1.5 s)
            process.send_signal(signal.SIGTERM)
            replies = [f.result() for f in futures]
        assert [r.status_code for r in replies] == [200] * 8
        assert sum(len(r.json()["predictions"]) for r in replies) == 24
        assert process.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)


def test_serve_metrics_count_batches_of_several_requests(run_formats):
    rows = [r["text"] for r in _test_rows(run_formats["torch"])]
    with server(run_formats["torch"], "--max-wait-ms", "500") as (_, base):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: httpx.post(f"{base}/predict", json={"text": rows[i]}, timeout=60),
                                    range(4)))
        assert all(r.status_code == 200 for r in replies)
        metrics = httpx.get(f"{base}/metrics").text
        calls = float(re.search(r"lmcompress_batch_texts_count (\S+)", metrics).group(1))
        assert calls < 4  # four requests arriving together did not make four model calls


def test_second_server_on_the_same_port_is_one_line(tiny_teacher_run, capsys):
    with server(tiny_teacher_run) as (_, base):
        port = base.rsplit(":", 1)[1]
        code, _, err = run_cli(["serve", "--model", str(tiny_teacher_run), "--port", port], capsys)
        assert code == 1
        one_error_line(err, f"127.0.0.1:{port} is already in use")
        assert httpx.get(f"{base}/health").status_code == 200  # the first one is untouched
    code, _, err = run_cli(["serve", "--model", "/no/such/run", "--port", "0"], capsys)
    one_error_line(err, "no such run directory")
