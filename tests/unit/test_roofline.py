"""The report's int8 matmul peak: its graph loads in every onnxruntime the project accepts, and an onnxruntime that
refuses it costs the report its int8 peak, not the whole compare."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort

from lmcompress import roofline

# pyproject accepts onnxruntime>=1.18, which reads ONNX IR up to version 10 and opsets up to 21
OLDEST_ORT_IR, OLDEST_ORT_OPSET = 10, 21


def test_the_int8_peak_graph_is_one_an_old_onnxruntime_reads_and_it_multiplies():
    model = onnx.load_from_string(roofline.int8_peak_model(n=8))
    onnx.checker.check_model(model)
    assert model.ir_version <= OLDEST_ORT_IR  # onnx's default (its newest IR) broke onnxruntime 1.30 on IR 14
    assert all(o.version <= OLDEST_ORT_OPSET for o in model.opset_import)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # activations below 128: without VNNI, ONNX Runtime's u8 x s8 kernel (AVX2 vpmaddubsw) adds pairs of products in
    # int16 and saturates past 32,767 (seen on an AVX2-only EPYC); 2 x 127 x 128 stays inside, so the product is exact
    a = np.random.default_rng(3).integers(0, 128, (8, 8), dtype=np.uint8)
    weights = onnx.numpy_helper.to_array(model.graph.initializer[0])
    (product,) = session.run(["c"], {"a": a})
    np.testing.assert_array_equal(product, a.astype(np.int32) @ weights.astype(np.int32))


def test_an_onnxruntime_that_refuses_the_graph_leaves_only_the_int8_peak_out(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Unsupported model IR version: 14, max supported: 13")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with caplog.at_level(logging.WARNING, logger="lmcompress"):
        peaks = roofline.matmul_peaks(threads=1, bf16=False)
    assert peaks["int8"] is None and peaks["bf16"] is None
    assert peaks["fp32"] > 0
    assert "no int8 peak" in caplog.text and "IR version: 14" in caplog.text
