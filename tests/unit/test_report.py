from lmcompress.report import pareto_front


def test_pareto_front():
    # (latency, value): lower latency and higher value are better
    points = [(100.0, 0.90), (50.0, 0.85), (60.0, 0.80), (10.0, 0.70), (10.0, 0.60), (200.0, 0.90)]
    assert pareto_front(points) == [True, True, False, True, False, False]
    assert pareto_front([(1.0, 1.0)]) == [True]


def _report(teacher_row: dict) -> dict:
    setup = {"latency_repeats": 5, "seq_len": 64, "threads": 2, "interleaved": True, "matmul_peak_gflops": {}}
    data = {"sizes": {"test": 10}, "test_fingerprint": "abc"}
    student = {"name": "student", "backend": "openvino", "backends": {"torch": {}, "openvino": {}}}
    return {"setup": setup, "data": data, "teacher": "teacher", "rows": [{"name": "teacher", **teacher_row}, student],
            "versions": {"torch": "x", "transformers": "y"}}


def test_setup_line_names_the_runtime_the_speedups_are_against():
    """Speedups are against the teacher's PyTorch fp32 rounds when it has them, else against its own runtime."""
    from lmcompress.report import _setup_line

    only_torch = _setup_line(_report({"backend": "torch"}))  # e.g. its ONNX export failed: PyTorch only
    assert "speedups against the teacher on PyTorch fp32" in only_torch
    several = _setup_line(_report({"backend": "openvino", "backends": {"torch": {}, "openvino": {}}}))
    assert "speedups against the teacher on PyTorch fp32" in several
    deployed = _setup_line(_report({"backend": "onnxruntime"}))  # an int8 teacher, served as it is
    assert "speedups against the teacher on its own runtime (onnxruntime)" in deployed
    no_backends = _setup_line({**_report({"backend": "torch"}), "rows": [{"name": "teacher", "backend": "torch"}]})
    assert "fastest backend" not in no_backends  # nothing to choose between


def test_report_says_how_to_use_the_models_on_the_front():
    """The teacher and the rows off the front get no commands; the TF-IDF reference row has no run to serve."""
    from lmcompress.report import _use_lines

    rows = [{"name": "teacher", "pareto": True, "run": "runs/teacher"},
            {"name": "fast", "pareto": True, "run": "runs/fast"},
            {"name": "slow", "pareto": False, "run": "runs/slow"},
            {"name": "tfidf", "pareto": True, "reference": True}]
    text = "\n".join(_use_lines({"teacher": "teacher", "rows": rows}))
    assert "lmcompress serve --model runs/fast" in text
    assert "lmcompress predict --model runs/fast --data texts.csv --out predictions.jsonl" in text
    assert "runs/slow" not in text and "runs/teacher" not in text and "tfidf" not in text
    assert _use_lines({"teacher": "teacher", "rows": rows[:1]}) == []
    assert _use_lines({"teacher": "teacher", "rows": rows, "task": "mlm+nsp"}) == []  # refused by predict and serve
    assert "runs/fast" in "\n".join(_use_lines({"teacher": "teacher", "rows": rows, "task": "clm"}))
