"""Causal-LM compression through the CLI on a tiny Llama (grouped-query attention) sharing the tiny GPT-2's
tokenizer: prune-lm with recovery and a random-init baseline, bitwise resume of the recovery, the GGUF export read
back by transformers, evaluate and compare on it (generation speed included), and one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmcompress.cli import main
from tests.integration.cli_helpers import assert_same_weights, interrupt_then_resume, one_error_line, run_cli


@pytest.fixture(scope="module")
def llama_teacher(clm_teacher, corpus, tmp_path_factory):
    """A tiny Llama (6 query heads in 2 KV groups, tied embeddings) pre-trained a few steps on the corpus."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(clm_teacher)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(root / "init")
    tokenizer.save_pretrained(root / "init")
    out = root / "teacher"
    code = main(["pretrain", "--model", str(root / "init"), "--data", str(corpus), "--out", str(out),
                       "--objective", "clm", *_common(root), "--max-steps", "30"])
    assert code == 0
    return out


def _common(root) -> list[str]:
    return ["--max-length", "32", "--batch-size", "8", "--learning-rate", "3e-3", "--quiet", "--cache-dir",
            str(root / "cache")]


def _prune(teacher, corpus, out, *extra):
    return ["prune-lm", "--model", str(teacher), "--data", str(corpus), "--out", str(out), "--heads", "0.34",
            "--kv-heads", "0.5", "--ffn", "0.5", "--layers", "3", "--top-k", "8", "--calibration-examples", "16",
            *_common(out.parent), *extra]


def test_prune_lm_recovers_and_records_the_random_init_baseline(llama_teacher, corpus, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(_prune(llama_teacher, corpus, out, "--max-steps", "12", "--baseline", "--json"),
                                capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["stage"] == "prune-lm" and manifest["task"]["type"] == "clm"
    pruning = manifest["pruning"]
    assert (pruning["layers"], pruning["heads_per_layer"], pruning["kv_heads_per_layer"], pruning["ffn_per_layer"]) \
        == ("4 -> 3", "6 -> 2", "2 -> 1", "64 -> 32")
    assert len(pruning["kept_layers"]) == 3 and pruning["params_ratio"] < 0.8
    baseline = metrics["baseline"]
    assert baseline["init"] == "random" and (tmp_path / "pruned-baseline" / "metrics.json").is_file()
    assert baseline["metrics"]["perplexity"] == pytest.approx(json.loads(
        (tmp_path / "pruned-baseline" / "metrics.json").read_text())["metrics"]["perplexity"])
    # the pruned start keeps most of what the teacher knew; a random start knows nothing
    random_start = json.loads((tmp_path / "pruned-baseline" / "metrics.json").read_text())["metrics_before"]
    assert metrics["metrics_before"]["perplexity"] < random_start["perplexity"]
    assert not list(tmp_path.glob(".pruned.*"))  # the pruned and random inits are cleaned up

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)  # transformers alone
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.intermediate_size, model.config.head_dim) == (3, 2, 1, 32, 8)


def test_prune_lm_recovery_resumes_bitwise_after_its_baseline(llama_teacher, corpus, tmp_path, capsys, monkeypatch):
    args = ("--max-steps", "8", "--checkpoint-every-steps", "3", "--baseline")
    code, _, err = run_cli(_prune(llama_teacher, corpus, tmp_path / "straight", *args), capsys)
    assert code == 0, err
    # the baseline trains 8 steps first: the 11th backward pass is the recovery's 3rd
    interrupt_then_resume(monkeypatch, capsys, _prune(llama_teacher, corpus, tmp_path / "resumed", *args),
                          at_backward=11)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert_same_weights(tmp_path / "straight-baseline", tmp_path / "resumed-baseline")
    kept, again = (json.loads((tmp_path / name / "metrics.json").read_text())["baseline"]["metrics"]
                   for name in ("straight", "resumed"))
    assert kept == again


def test_gguf_export_reads_back_exactly_and_evaluate_and_compare_score_it(llama_teacher, tmp_path, capsys):
    gguf_run = tmp_path / "gguf"
    code, stdout, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--out",
                                 str(gguf_run), "--json", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    source = json.loads((llama_teacher / "metrics.json").read_text())
    assert metrics["metrics"]["perplexity"] == pytest.approx(source["metrics"]["perplexity"], rel=1e-3)
    export = json.loads((gguf_run / "lmcompress.json").read_text())["export"]
    assert export["format"] == "gguf" and export["validation"]["max_abs_logit_diff"] <= 1e-3
    assert export["validation"]["argmax_agreement"] == 1.0
    assert sorted(p.name for p in gguf_run.glob("*.gguf")) == ["model.gguf"]

    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_run / "model.gguf")).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.attention.head_count_kv"].contents() == 2

    code, stdout, err = run_cli(["evaluate", "--model", str(gguf_run), "--json", "--latency-repeats", "2"], capsys)
    assert code == 0, err
    evaluated = json.loads(stdout)
    assert evaluated["metrics"]["perplexity"] == pytest.approx(metrics["metrics"]["perplexity"], rel=1e-4)
    assert evaluated["generation"]["decode_tokens_per_s"] > 0 and evaluated["generation"]["ttft_ms"] > 0

    report = tmp_path / "report"
    plain = str(gguf_run / "model.gguf")  # a plain .gguf file, as llama.cpp users hold a teacher, is a row too
    code, _, err = run_cli(["compare", str(llama_teacher), str(gguf_run), plain, "--out", str(report),
                            "--latency-repeats", "2", "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert rows[1]["made_by"] == "export gguf fp32" and rows[1]["generation"]["new_tokens"] == 32
    assert rows[1]["backend"] == "torch (GGUF dequantised)" and rows[0]["backend"] == "torch"
    assert rows[2]["made_by"] == "checkpoint" and rows[2]["value"] == pytest.approx(rows[1]["value"], rel=1e-4)
    assert "latency_rounds_ms_b32" in rows[0]  # timed side by side
    assert "time to first token" in (report / "report.md").read_text()


def test_quantised_gguf_keeps_llama_cpp_precisions_and_records_its_perplexity(llama_teacher, tmp_path, capsys):
    from gguf import GGUFReader

    from lmcompress.backends import llama_cpp
    from lmcompress.stages.gguf_export import DEFAULT_ROUNDING

    source = json.loads((llama_teacher / "metrics.json").read_text())["metrics"]["perplexity"]
    for precision, quantised in (("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q4_m", "Q8_0")):  # q4_m: FFN down in 8 bits
        out = tmp_path / precision
        with pytest.MonkeyPatch.context() as patch:  # as where llama.cpp is not installed: one line says how
            patch.setattr(llama_cpp, "available", lambda: False)
            code, stdout, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--precision",
                                         precision, "--out", str(out), "--json"], capsys)
        assert code == 0, err
        assert err.count("bash scripts/setup.sh --with-llama-cpp") == 1
        validation = json.loads((out / "lmcompress.json").read_text())["export"]["validation"]
        assert validation["perplexity_pytorch"] == pytest.approx(source, rel=1e-4)
        assert validation["perplexity_file"] == json.loads(stdout)["metrics"]["perplexity"]
        assert abs(validation["perplexity_increase"]) <= {"q8_0": 0.05, "q4_0": 0.5, "q4_m": 0.5}[precision]
        types = {t.name: t.tensor_type.name for t in GGUFReader(str(out / "model.gguf")).tensors}
        # hidden 48 is not whole 32-value blocks: those matrices stay F16; the FFN's down projection (rows of 64) is
        # quantised; norms stay F32; a q4_0 file keeps the (tied) token embedding at 8 bits, as llama-quantize does
        assert types["blk.0.ffn_down.weight"] == quantised and types["blk.0.attn_q.weight"] == "F16"
        assert types["blk.0.attn_norm.weight"] == "F32" and types["token_embd.weight"] == "F16"
        assert validation["tensor_types"][quantised] == 4  # one per layer
        # Q4_0 matrices are rounded by the activations of training blocks (q4_0's default method); a file without
        # any (q8_0, and q4_m here: its only quantised matrix, FFN down, keeps 8 bits) says plain
        assert validation["rounding"] == (DEFAULT_ROUNDING["q4_0"] if quantised == "Q4_0" else "plain")
        assert validation.get("rounded_tensors", 0) == (4 if quantised == "Q4_0" else 0)
        assert validation.get("calibration_blocks", 0) == (64 if quantised == "Q4_0" else 0)  # the default
    q8, q4, q4m = ((tmp_path / p / "model.gguf").stat().st_size for p in ("q8_0", "q4_0", "q4_m"))
    assert q4 < q4m and q4 < q8
    _plain_rounding_is_llama_quantizes_and_differs_from_the_weighted(llama_teacher, tmp_path, capsys)
    code, _, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--precision", "q4_0",
                            "--tolerance", "1e-9", "--out", str(tmp_path / "tight"), "--quiet"], capsys)
    assert code == 1 and not (tmp_path / "tight").exists() and not list(tmp_path.glob(".tight*"))
    one_error_line(err, "perplexity is", "nothing was written")


def _plain_rounding_is_llama_quantizes_and_differs_from_the_weighted(llama_teacher, tmp_path, capsys):
    """--calibration-blocks 0: the gguf package's plain Q4_0 bytes, byte for byte; the weighted and GPTQ files
    differ from it and from each other, and each says how it was rounded."""
    import gguf
    from safetensors.torch import load_file

    runs = {"plain": ["--calibration-blocks", "0"], "importance": ["--rounding", "importance"],
            "gptq": ["--rounding", "gptq"]}
    for name, extra in runs.items():
        code, _, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--precision", "q4_0",
                                *extra, "--out", str(tmp_path / name), "--quiet"], capsys)
        assert code == 0, err
        assert json.loads((tmp_path / name / "lmcompress.json").read_text())["export"]["validation"]["rounding"] == \
            name
    down = load_file(str(llama_teacher / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"].float().numpy()
    tensors = {name: {t.name: t.data for t in gguf.GGUFReader(str(tmp_path / name / "model.gguf")).tensors}
               for name in runs}
    expected = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(tensors["plain"]["blk.0.ffn_down.weight"], expected)
    assert not np.array_equal(tensors["importance"]["blk.0.ffn_down.weight"], expected)
    assert not np.array_equal(tensors["gptq"]["blk.0.ffn_down.weight"], tensors["importance"]["blk.0.ffn_down.weight"])
    contradictions = {("--precision", "q8_0", "--rounding", "gptq"): "--rounding gptq applies to --format gguf",
                      ("--precision", "q4_0", "--rounding", "gptq", "--calibration-blocks", "0"): "drop --calibration",
                      ("--precision", "q4_m", "--calibration-blocks", "8"): "rounds plainly here"}
    for extra, words in contradictions.items():
        out = tmp_path / "contradiction"
        code, _, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", *extra, "--out",
                                str(out), "--quiet"], capsys)
        assert code == 1 and not out.exists()
        one_error_line(err, words)


def test_llama_cpp_reads_and_runs_the_exported_file(llama_teacher, tmp_path, capsys):
    pytest.importorskip("llama_cpp")  # the optional extra (setup.sh --with-llama-cpp); CI does not build it
    out = tmp_path / "q8"
    code, stdout, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--precision", "q8_0",
                                 "--out", str(out), "--json", "--quiet"], capsys)
    assert code == 0, err
    file_perplexity = json.loads(stdout)["metrics"]["perplexity"]
    check = json.loads((out / "lmcompress.json").read_text())["export"]["validation"]["llama_cpp"]
    assert check["perplexity"] == pytest.approx(file_perplexity, rel=0.05) and check["version"]
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--json", "--latency-repeats", "2", "--quiet"],
                                capsys)
    assert code == 0, err
    payload = json.loads(stdout)["llama_cpp"]
    assert payload["perplexity"] == pytest.approx(check["perplexity"], rel=1e-6)  # the same file
    assert payload["generation"]["decode_tokens_per_s"] > 0 and payload["generation"]["new_tokens"] == 32
    timer = payload["generation"]["timer"]  # llama.cpp's own timer of its forward passes: faster than the loop
    assert timer["decode_tokens_per_s"] >= payload["generation"]["decode_tokens_per_s"] * 0.9


def test_a_gguf_run_is_served_by_llama_cpp_when_installed_else_by_transformers(llama_teacher, tmp_path, capsys,
                                                                               monkeypatch):
    import lmcompress
    from lmcompress.backends import llama_cpp

    out = tmp_path / "fp32"
    code, _, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--out", str(out),
                            "--quiet"], capsys)
    assert code == 0, err
    with monkeypatch.context() as patch:
        patch.setattr(llama_cpp, "available", lambda: False)
        fallback = lmcompress.load(str(out))
        assert (fallback.card.runtime, fallback.card.task) == ("gguf", "text-generation")
        expected = fallback.generate("the film", max_new_tokens=4)["generated_text"]
    reference = lmcompress.load(str(llama_teacher)).generate("the film", max_new_tokens=4)["generated_text"]
    assert expected == reference  # the file read back by transformers generates as the checkpoint does
    if not llama_cpp.available():
        return  # the optional extra (setup.sh --with-llama-cpp): CI does not build it; the rest runs where it is
    served = lmcompress.load(str(out), threads=1)
    assert (served.card.runtime, served.card.precision) == ("llama.cpp", "fp32 file")
    assert (served.card.params, served.card.max_length) == (fallback.card.params, fallback.card.max_length)
    assert served.generate("the film", max_new_tokens=4)["generated_text"] == expected  # greedy, same file
    with pytest.raises(lmcompress.LmcError, match="passes the model's"):
        served.generate("the film " * 64, max_new_tokens=4)


@pytest.mark.parametrize("case", ["gpt2-gguf", "task-run-gguf", "encoder-prune-lm", "corpus-in-prune", "gpt2-kv"])
def test_causal_compression_refuses_in_one_line(case, clm_teacher, llama_teacher, tiny_bert_dir, corpus, tmp_path,
                                                 capsys):
    out = tmp_path / "out"
    args, fragments = {
        "gpt2-gguf": (["export", "--model", str(clm_teacher), "--format", "gguf"], ["Llama-family", "not gpt2"]),
        "task-run-gguf": (["export", "--model", str(tiny_bert_dir), "--format", "gguf"], ["Llama-family"]),
        "encoder-prune-lm": (["prune-lm", "--model", str(tiny_bert_dir), "--data", str(corpus), "--heads", "0.5"],
                             ["is a bert model, an encoder: use `lmcompress prune`"]),
        "corpus-in-prune": (["prune", "--model", str(llama_teacher), "--data", "enwiki-sample", "--heads", "0.5"],
                            ["prune-lm"]),
        "gpt2-kv": (["prune-lm", "--model", str(clm_teacher), "--data", str(corpus), "--kv-heads", "0.5", "--quiet"],
                    ["no grouped-query attention"]),
    }[case]
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert code != 0
    one_error_line(err, *fragments)
    assert not out.exists()


def test_causal_lm_runs_quantize_and_export_to_onnx_with_perplexity_rescored(llama_teacher, clm_teacher, tmp_path,
                                                                           capsys):
    source = json.loads((llama_teacher / "metrics.json").read_text())["metrics"]["perplexity"]
    int8 = tmp_path / "int8"
    code, stdout, err = run_cli(["quantize", "--model", str(llama_teacher), "--method", "onnx-int8", "--out", str(int8),
                                 "--json", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    manifest = json.loads((int8 / "lmcompress.json").read_text())
    assert manifest["quantization"]["export_validation"]["max_abs_logit_diff"] <= 1e-3
    assert metrics["delta_vs_parent"] == pytest.approx(metrics["metrics"]["perplexity"] - source, abs=1e-6)
    assert abs(metrics["delta_vs_parent"]) < 0.05 * source  # int8 keeps the model, and it was measured, not assumed
    code, stdout, err = run_cli(["export", "--model", str(clm_teacher), "--out", str(tmp_path / "gpt2-onnx"),
                                 "--json", "--quiet"], capsys)
    assert code == 0, err
    gpt2 = json.loads((clm_teacher / "metrics.json").read_text())["metrics"]["perplexity"]
    assert json.loads(stdout)["metrics"]["perplexity"] == pytest.approx(gpt2, rel=1e-4)
    report = tmp_path / "report"
    code, _, err = run_cli(["compare", str(llama_teacher), str(int8), "--out", str(report), "--latency-repeats", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert rows[1]["made_by"] == "quantize onnx-int8" and rows[1]["generation"] is None  # a graph without a KV cache
    assert rows[0]["generation"]["decode_tokens_per_s"] > 0


def test_masked_lm_and_openvino_are_refused_for_lm_runs_in_one_line(llama_teacher, tiny_bert_dir, corpus, tmp_path,
                                                                   capsys):
    mlm = tmp_path / "mlm"
    assert main(["pretrain", "--model", str(tiny_bert_dir), "--data", str(corpus), "--out", str(mlm), "--objective",
                 "mlm", "--max-steps", "2", *_common(tmp_path)]) == 0
    for args, fragment in ((["quantize", "--model", str(mlm)], "masked-LM run"),
                           (["quantize", "--model", str(llama_teacher), "--method", "openvino-int8"], "OpenVINO"),
                           (["export", "--model", str(llama_teacher), "--format", "openvino"], "OpenVINO")):
        code, _, err = run_cli([*args, "--out", str(tmp_path / "out"), "--quiet"], capsys)
        assert code != 0
        one_error_line(err, fragment)
        assert not (tmp_path / "out").exists()


def test_load_generates_the_same_text_from_the_checkpoint_and_its_gguf(llama_teacher, tmp_path, capsys):
    import lmcompress

    code, _, err = run_cli(["export", "--model", str(llama_teacher), "--format", "gguf", "--out",
                            str(tmp_path / "gguf"), "--quiet"], capsys)
    assert code == 0, err
    checkpoint, gguf_file = lmcompress.load(str(llama_teacher)), lmcompress.load(str(tmp_path / "gguf"))
    from lmcompress.backends import llama_cpp

    # llama.cpp runs the file where it is installed, else transformers (both: the same greedy text)
    assert (checkpoint.card.runtime, gguf_file.card.runtime) == ("torch", "llama.cpp" if llama_cpp.available() else "gguf")
    assert gguf_file.card.task == "text-generation"
    prompt = "The movie was"
    text = checkpoint.generate(prompt, max_new_tokens=8)["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert gguf_file.generate(prompt, max_new_tokens=8)["generated_text"] == text  # greedy: the same tokens
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{prompt}\nA story\n", encoding="utf-8")
    out = tmp_path / "generated.jsonl"
    code, _, err = run_cli(["predict", "--model", str(tmp_path / "gguf"), "--data", str(prompts), "--out", str(out)],
                           capsys)
    assert code == 0, err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["text"] for w in written] == [prompt, "A story"]
    assert written[0]["generated_text"] == gguf_file.generate(prompt)["generated_text"]  # 32 new tokens, as predict
