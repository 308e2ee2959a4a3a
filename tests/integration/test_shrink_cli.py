"""prune / quantize / export through the CLI on the tiny teacher run: outputs reload alone, errors are one line."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForSequenceClassification

from lmcompress.timing import per_round_ratios, quartiles

from .cli_helpers import one_error_line, run_cli


TRAIN = ["--epochs", "1", "--batch-size", "16", "--learning-rate", "2e-3", "--quiet"]


def test_prune_with_recovery_reloads_with_transformers_alone(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, _, err = run_cli(["prune", "--model", str(tiny_teacher_run), "--heads", "0.5", "--ffn", "0.5",
                            "--calibration-examples", "64", "--out", str(out), "--json", *TRAIN], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["stage"] == "prune" and manifest["complete"] is True
    assert manifest["pruning"]["heads_per_layer"] == "4 -> 2" and manifest["pruning"]["hidden"] == "32 -> 16"
    assert manifest["pruning"]["calibration_examples"] == 64
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert (model.config.num_attention_heads, model.config.hidden_size, model.config.intermediate_size) == (2, 16, 18)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert not list(tmp_path.glob(".*"))  # no partial or pruned-init folders left behind


def test_prune_layers_without_recovery(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "one-layer"
    code, _, err = run_cli(["prune", "--model", str(tiny_teacher_run), "--layers", "1", "--recovery", "none",
                            "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    kept = json.loads((out / "lmcompress.json").read_text())["pruning"]["kept_layers"]
    assert len(kept) == 1
    # a student started from the pruned run (and one started from that student) matches each of its layers to the
    # teacher layer it was cut from in the hidden-state loss
    student = out
    for name in ("distilled", "distilled-again"):
        code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", str(student),
                                "--hidden-weight", "1", "--out", str(tmp_path / name), *TRAIN], capsys)
        assert code == 0, err
        student = tmp_path / name
        recorded = json.loads((student / "lmcompress.json").read_text())["student"]
        assert recorded["teacher_layers_copied"] == kept and recorded["layer_map"] == [kept[0] + 1]
    # so does prune's own recovery (distilled from the unpruned model)
    code, _, err = run_cli(["prune", "--model", str(tiny_teacher_run), "--layers", "1", "--out",
                            str(tmp_path / "recovered"), *TRAIN], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "recovered" / "lmcompress.json").read_text())
    assert manifest["student"]["layer_map"] == [manifest["pruning"]["kept_layers"][0] + 1], manifest["pruning"]


def test_quantize_methods_export_evaluate_and_compare(tiny_teacher_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    teacher = json.loads((tiny_teacher_run / "metrics.json").read_text())
    runs = {}
    for method in ("onnx-int8", "static-int8"):
        out = tmp_path / method
        code, _, err = run_cli(["quantize", "--model", str(tiny_teacher_run), "--method", method,
                                "--calibration-examples", "12", "--out", str(out), "--quiet"], capsys)
        assert code == 0, err
        manifest = json.loads((out / "lmcompress.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        assert manifest["quantization"]["method"] == method
        assert metrics["delta_vs_parent"] == pytest.approx(metrics["metrics"]["accuracy"] - teacher["metrics"]["accuracy"])
        runs[method] = out
    onnx_manifest = json.loads((runs["onnx-int8"] / "lmcompress.json").read_text())
    assert onnx_manifest["quantization"]["export_validation"]["max_abs_logit_diff"] < 1e-3
    assert json.loads((runs["static-int8"] / "lmcompress.json").read_text())["quantization"]["calibration_examples"] == 12
    ort.InferenceSession(str(runs["onnx-int8"] / "model.onnx"))  # plain onnxruntime loads it

    for precision in ("fp32", "fp16"):
        out = tmp_path / f"onnx-{precision}"
        code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--precision", precision, "--out", str(out),
                                "--quiet"], capsys)
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        if precision == "fp32":  # exact export: the same predictions as PyTorch
            assert metrics["metrics"]["accuracy"] == pytest.approx(teacher["metrics"]["accuracy"])
        runs[precision] = out
    assert (runs["onnx-int8"] / "model.onnx").stat().st_size < (runs["fp32"] / "model.onnx").stat().st_size

    code, out, err = run_cli(["evaluate", "--model", str(runs["onnx-int8"]), "--json", "--latency-repeats", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["metrics"]["accuracy"] == pytest.approx(
        json.loads((runs["onnx-int8"] / "metrics.json").read_text())["metrics"]["accuracy"])

    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(tiny_teacher_run), str(runs["onnx-int8"]), str(runs["static-int8"]),
                            str(runs["fp16"]), "--out", str(report), "--latency-repeats", "1", "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["teacher", "onnx-int8", "static-int8", "onnx-fp16"]
    assert rows[1]["params"] == rows[2]["params"] == rows[0]["params"]  # int8 keeps every weight, in fewer bits
    assert [r["precision"] for r in rows] == ["fp32", "int8", "int8", "fp16"]  # the arithmetic each one ran


def test_openvino_export_and_int8_score_like_any_run(tiny_teacher_run, tmp_path, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    teacher = json.loads((tiny_teacher_run / "metrics.json").read_text())
    fp32 = tmp_path / "ov-fp32"
    code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--format", "openvino", "--out", str(fp32),
                            "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((fp32 / "lmcompress.json").read_text())
    assert manifest["openvino"]["precision"] == "fp32"
    assert manifest["export"]["validation"]["max_abs_logit_diff"] < 1e-3
    metrics = json.loads((fp32 / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] == pytest.approx(teacher["metrics"]["accuracy"])  # an exact conversion
    assert metrics["params"] == teacher["params"]
    assert sorted(p.name for p in fp32.glob("model.*")) == ["model.bin", "model.xml"]

    int8 = tmp_path / "ov-int8"
    code, _, err = run_cli(["quantize", "--model", str(tiny_teacher_run), "--method", "openvino-int8",
                            "--calibration-examples", "12", "--out", str(int8), "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((int8 / "lmcompress.json").read_text())
    assert manifest["quantization"]["method"] == "openvino-int8" and manifest["quantization"]["calibration_examples"] == 12
    assert not list(int8.glob("*.onnx")) and not list(int8.glob("int8.*"))  # only the IR ships
    ir = ov.Core().read_model(str(int8 / "model.xml"))  # plain openvino loads it
    assert "FakeQuantize" in {op.get_type_name() for op in ir.get_ops()}  # activations quantized
    assert any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
               for op in ir.get_ops())  # weights stored in int8
    assert (int8 / "model.bin").stat().st_size < (fp32 / "model.bin").stat().st_size / 2

    code, out, err = run_cli(["evaluate", "--model", str(int8), "--json", "--latency-repeats", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["metrics"]["accuracy"] == pytest.approx(
        json.loads((int8 / "metrics.json").read_text())["metrics"]["accuracy"])
    code, _, err = run_cli(["quantize", "--model", str(fp32), "--out", str(tmp_path / "again")], capsys)
    assert code == 1
    one_error_line(err, "already an OpenVINO run")
    code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--format", "openvino", "--precision", "fp16",
                            "--out", str(tmp_path / "half")], capsys)
    assert code == 1
    one_error_line(err, "--precision fp16 does not apply to --format openvino")


def test_compare_backends_auto_times_every_runtime(tiny_teacher_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from lmcompress.backends import serving

    monkeypatch.setattr(serving, "cpu_has_bf16", lambda: True)  # bf16 variants too, emulated on any CPU
    int8 = tmp_path / "int8"
    assert run_cli(["quantize", "--model", str(tiny_teacher_run), "--out", str(int8), "--quiet"], capsys)[0] == 0
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(tiny_teacher_run), str(int8), "--backends", "auto", "--out", str(report),
                            "--latency-repeats", "2", "--quiet"], capsys)
    assert code == 0, err
    payload = json.loads((report / "report.json").read_text())
    teacher, quantized = payload["rows"]
    assert set(teacher["backends"]) == {"torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16"}
    assert quantized["backend"] == "onnxruntime" and "backends" not in quantized  # a deployment format as it is
    fastest = min(teacher["backends"], key=lambda b: teacher["backends"][b]["latency_ms_b32"])
    assert teacher["backend"] == fastest
    assert teacher["latency_ms_b32"] == teacher["backends"][fastest]["latency_ms_b32"]
    for backend in ("onnxruntime", "openvino"):  # fp32 exports serve the same predictions
        assert teacher["backends"][backend]["value"] == pytest.approx(teacher["backends"]["torch"]["value"])
    # the teacher's own speedup is its fastest backend against PyTorch fp32, round by round
    torch_rounds = teacher["backends"]["torch"]["latency_rounds_ms_b32"]
    expected = quartiles(per_round_ratios(torch_rounds, teacher["latency_rounds_ms_b32"]))[1]
    assert teacher["speedup_b32"] == pytest.approx(expected, abs=1e-3)
    markdown = (report / "report.md").read_text()
    assert "Every backend" in markdown and "openvino-bf16" in markdown
    assert "speedups against the teacher on PyTorch fp32" in markdown and " GOP/s" in markdown  # int8 peak

    # roofline: FLOPs from the config, achieved rate over the latency, share of the peak of the row's precision
    config, seq = json.loads((tiny_teacher_run / "config.json").read_text()), payload["setup"]["seq_len"]
    layers, hidden, ffn = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    flops = 2 * 32 * seq * layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * seq * hidden)
    assert teacher["gflop_b32"] == pytest.approx(flops / 1e9, abs=1e-3) == quantized["gflop_b32"]
    peaks = payload["setup"]["matmul_peak_gflops"]
    assert peaks["fp32"] > 0 and peaks["int8"] > 0
    assert quantized["precision"] == "int8"
    # the share is rounded to 4 decimals: a tiny model's share (~0.004) is only that exact
    assert quantized["peak_share_b32"] == pytest.approx(quantized["gflops_b32"] / peaks["int8"], rel=1e-2, abs=5e-5)
    assert quantized["gflops_b32"] == pytest.approx(quantized["gflop_b32"] / quantized["latency_ms_b32"] * 1000, rel=1e-2)
    assert "% of peak" in markdown

    # an int8 teacher is served as it is: its speedups are against that runtime, and the report says so
    code, _, err = run_cli(["compare", str(int8), str(tiny_teacher_run), "--backends", "auto", "--out",
                            str(tmp_path / "int8-teacher"), "--latency-repeats", "1", "--quiet"], capsys)
    assert code == 0, err
    assert "speedups against the teacher on its own runtime (onnxruntime)" in (
        tmp_path / "int8-teacher" / "report.md").read_text()


def test_compare_backends_auto_says_what_it_could_not_time(tiny_teacher_run, tmp_path, capsys, monkeypatch):
    """Without openvino, or with a model the exporter rejects, the comparison goes on with what can run and says
    which runtimes it left out."""
    pytest.importorskip("onnxscript")
    from lmcompress.backends import onnx_io, serving
    from lmcompress.errors import LmcError

    monkeypatch.setattr(serving, "cpu_has_bf16", lambda: False)
    real_installed = serving.installed
    monkeypatch.setattr(serving, "installed", lambda *names: "openvino" not in names and real_installed(*names))

    def compared_backends(out: str) -> tuple[set[str], str]:
        code, _, err = run_cli(["compare", str(tiny_teacher_run), "--backends", "auto", "--out", str(tmp_path / out),
                                "--latency-repeats", "1", "--quiet"], capsys)
        assert code == 0, err
        row = json.loads((tmp_path / out / "report.json").read_text())["rows"][0]
        return set(row.get("backends", [row["backend"]])), err

    backends, err = compared_backends("no-openvino")
    assert backends == {"torch", "onnxruntime"} and "OpenVINO not timed (openvino is not installed" in err

    if real_installed("openvino"):  # OpenVINO cannot convert the export: ONNX Runtime is still timed
        monkeypatch.setattr(serving, "installed", real_installed)

        def unconvertible(*_args, **_kwargs):
            raise LmcError("OpenVINO cannot convert fp32.onnx: an unsupported op")

        monkeypatch.setattr(serving, "onnx_to_ir", unconvertible)
        backends, err = compared_backends("no-ir")
        assert backends == {"torch", "onnxruntime"} and "OpenVINO not timed: OpenVINO cannot convert" in err

    def rejected(*_args, **_kwargs):
        raise LmcError("ONNX export of BertForSequenceClassification failed: an unsupported op")

    monkeypatch.setattr(onnx_io, "export_onnx", rejected)
    backends, err = compared_backends("no-export")
    assert backends == {"torch"}
    assert "ONNX Runtime and OpenVINO not timed: ONNX export of BertForSequenceClassification failed" in err


def test_openvino_bf16_run_on_a_cpu_without_bf16_is_served_and_labelled_fp32(tiny_teacher_run, tmp_path, capsys,
                                                                               monkeypatch):
    """A bf16 IR made on a bf16 machine and compared on one without: OpenVINO would ignore the hint and run f32, so
    the report says fp32 (and warns) rather than naming arithmetic that never ran."""
    pytest.importorskip("openvino")
    from lmcompress.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_has_bf16", lambda: True)  # the machine it was made on
    made = tmp_path / "ov-bf16"
    code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--format", "openvino", "--precision", "bf16",
                            "--out", str(made), "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((made / "lmcompress.json").read_text())["openvino"]["precision"] == "bf16"

    monkeypatch.setattr(ov_backend, "cpu_has_bf16", lambda: False)  # the machine it is served on
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(tiny_teacher_run), str(made), "--out", str(report), "--latency-repeats", "1",
                            "--quiet"], capsys)
    assert code == 0, err
    assert "made for OpenVINO bf16" in err and "in fp32" in err
    served = json.loads((report / "report.json").read_text())["rows"][1]
    assert (served["backend"], served["precision"]) == ("openvino", "fp32")


def test_openvino_bf16_export_is_refused_on_a_cpu_without_bf16(tiny_teacher_run, tmp_path, capsys, monkeypatch):
    """OpenVINO would ignore the bf16 hint and run f32: one line, nothing written."""
    pytest.importorskip("openvino")
    from lmcompress.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_has_bf16", lambda: False)
    out = tmp_path / "ov-bf16"
    code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--format", "openvino", "--precision", "bf16",
                            "--out", str(out), "--quiet"], capsys)
    assert code == 1
    one_error_line(err, "no bf16 kernels for OpenVINO", "--precision fp32")
    assert not out.exists()


def test_quantize_and_export_bad_input(tiny_teacher_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "strict"
    code, _, err = run_cli(["export", "--model", str(tiny_teacher_run), "--tolerance", "1e-15", "--out", str(out)], capsys)
    assert code == 1
    one_error_line(err, "ONNX validation failed", "nothing was written")
    assert not out.exists() and not list(tmp_path.glob(".*"))

    good = tmp_path / "onnx"
    assert run_cli(["export", "--model", str(tiny_teacher_run), "--out", str(good), "--quiet"], capsys)[0] == 0
    code, _, err = run_cli(["quantize", "--model", str(good), "--out", str(tmp_path / "again")], capsys)
    assert code == 1
    one_error_line(err, "already an ONNX run")
    code, _, err = run_cli(["quantize", "--model", str(tiny_teacher_run), "--method", "int4", "--out", str(out)], capsys)
    assert code == 2 and "invalid choice: 'int4'" in err
    code, _, err = run_cli(["quantize", "--model", str(tiny_teacher_run), "--method", "dynamic-int8", "--out", str(out)],
                           capsys)  # removed: the line says why and what to use instead
    assert code == 1
    one_error_line(err, "dynamic-int8 was removed", "onnx-int8 or openvino-int8")
    old = tmp_path / "old-dynamic"  # a run made before: refused where it is loaded, with the way forward
    shutil.copytree(tiny_teacher_run, old)
    manifest = json.loads((old / "lmcompress.json").read_text())
    (old / "lmcompress.json").write_text(json.dumps(manifest | {"quantization": {"method": "dynamic-int8"}}))
    code, _, err = run_cli(["evaluate", "--model", str(old)], capsys)
    assert code == 1
    one_error_line(err, "no longer serves", "quantize its parent again")
    code, _, err = run_cli(["quantize", "--model", str(tmp_path / "missing"), "--out", str(out)], capsys)
    assert code == 1
    one_error_line(err, "is not a run directory")


def test_albert_student_through_distill(tiny_teacher_run, tmp_path, capsys):
    out = tmp_path / "albert"
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "albert;embedding=8;shared",
                            "--hidden-weight", "1", "--out", str(out), *TRAIN], capsys)
    assert code == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "AlbertForSequenceClassification"
    assert model.config.embedding_size == 8 and model.config.num_hidden_groups == 1
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["student"]["spec"] == "albert;embedding=8;shared" and manifest["student"]["layer_map"] == [1, 2]
    teacher_params = json.loads((tiny_teacher_run / "metrics.json").read_text())["params"]
    assert json.loads((out / "metrics.json").read_text())["params"] < teacher_params
    code, _, err = run_cli(["distill", "--teacher", str(tiny_teacher_run), "--student", "albert;embedding=64",
                            "--out", str(tmp_path / "bad")], capsys)
    assert code == 1
    one_error_line(err, "embedding=64 must be smaller than the teacher's hidden width 32")


def test_prune_recovery_on_labels_never_runs_the_teacher(tiny_teacher_run, tmp_path, capsys, monkeypatch):
    from lmcompress.distillation import components

    def teacher_ran(*args, **kwargs):
        raise AssertionError("the teacher ran for a KD term weighted 0")

    monkeypatch.setattr(components.TeacherOutputs, "compute", teacher_ran)
    out = tmp_path / "pruned-ft"
    code, _, err = run_cli(["prune", "--model", str(tiny_teacher_run), "--heads", "0.5", "--recovery", "finetune",
                            "--out", str(out), "--epochs", "1", "--batch-size", "16", "--log-every-steps", "1",
                            "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["teacher_cache"] is None and manifest["pruning"]["recovery"] == "finetune"
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {k for line in logged for k in line if k.startswith("train/loss_")} == {"train/loss_hard"}
