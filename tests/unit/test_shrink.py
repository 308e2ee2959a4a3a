"""Pruning importance and removal, ALBERT conversion, int8 and ONNX on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from lmcompress.errors import LmcError
from lmcompress.measure import count_params
from lmcompress.surgery import albert, prune
from lmcompress.backends.onnx import OnnxClassifier


@pytest.fixture()
def model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
                        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def batch(size: int = 1, length: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    if size > 1:
        mask[0, length - 3:] = 0  # padding must never count
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(size) % 2}


def _mask_gradient(model, b, module_of, width_of) -> list[torch.Tensor]:
    """dL/dm for a multiplicative mask m = 1 on the input of `module_of(layer)` (grouped by `width_of`)."""
    masks, handles = [], []
    for layer in model.bert.encoder.layer:
        m = torch.ones(width_of, requires_grad=True)
        masks.append(m)
        group = module_of(layer).in_features // width_of

        def hook(module, args, m=m, group=group):
            return (args[0] * m.repeat_interleave(group),)

        handles.append(module_of(layer).register_forward_pre_hook(hook))
    model(**b).loss.backward()
    for h in handles:
        h.remove()
    return [m.grad.abs() for m in masks]


def test_head_and_ffn_importance_equal_mask_gradients(model):
    """Michel et al.: head importance = |dL/d head-mask|; FFN neuron importance = |dL/d neuron-mask| (one example)."""
    b = batch()
    scores = prune.importance_scores(model, [b])
    heads = _mask_gradient(model, b, lambda layer: layer.attention.output.dense, 4)
    model.zero_grad()
    neurons = _mask_gradient(model, b, lambda layer: layer.output.dense, 40)
    for i in range(3):
        torch.testing.assert_close(scores.heads[i], heads[i], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores.ffn[i], neurons[i], rtol=1e-4, atol=1e-7)
    assert scores.layers.shape == (3,) and scores.hidden.shape == (32,) and (scores.layers > 0).all()


def test_importance_sums_examples_and_ignores_padding(model):
    """A padded batch scores like its rows alone, trimmed (x2: the batch loss is a mean over 2 rows)."""
    b = batch(size=2)
    row0 = {"input_ids": b["input_ids"][:1, :-3], "attention_mask": b["attention_mask"][:1, :-3], "labels": b["labels"][:1]}
    row1 = {k: v[1:] for k, v in b.items()}
    both = prune.importance_scores(model, [b])
    alone = [prune.importance_scores(model, [r]) for r in (row0, row1)]
    for name in ("heads", "ffn", "hidden"):
        torch.testing.assert_close(2 * getattr(both, name), getattr(alone[0], name) + getattr(alone[1], name),
                                   rtol=1e-4, atol=1e-6)


def test_pruning_dead_ffn_neurons_is_exact(model, tmp_path):
    """Neurons whose output weights are zero have zero importance; removing half of them changes nothing."""
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, ::2] = 0.0
    b = batch(size=2)
    scores = prune.importance_scores(model, [b])
    target = prune.plan(model.config, heads_ratio=0.0, ffn_ratio=0.5, layers=None, hidden=None)
    pruned, kept = prune.prune_model(model, scores, target)
    assert kept == [0, 1, 2] and pruned.config.intermediate_size == 20
    inputs = {k: v for k, v in b.items() if k != "labels"}
    torch.testing.assert_close(pruned.eval()(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-6)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-6)


def test_head_pruning_follows_bert_config_rules(model, tmp_path):
    scores = prune.importance_scores(model, [batch(size=2)])
    target = prune.plan(model.config, heads_ratio=0.5, ffn_ratio=0.25, layers=2, hidden=None)
    assert (target.heads, target.head_size, target.hidden, target.ffn) == (2, 8, 16, 30)
    pruned, kept = prune.prune_model(model, scores, target)
    assert kept == sorted(torch.topk(scores.layers, 2).indices.tolist())
    cfg = pruned.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (2, 2, 16, 30)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert count_params(reloaded) == count_params(pruned) < count_params(model) / 2
    narrower = prune.plan(model.config, heads_ratio=0.5, ffn_ratio=0.0, layers=None, hidden=8)
    assert (narrower.hidden, narrower.head_size) == (8, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=4), "only 3 layers"),
    (dict(hidden=64), "only 32 wide"),
    (dict(hidden=18), "multiple of the 2 kept heads with a head size of at most 8"),
])
def test_prune_plan_errors(model, kwargs, message):
    args = dict(heads_ratio=0.5, ffn_ratio=0.0, layers=None, hidden=None) | kwargs
    with pytest.raises(LmcError, match=message):
        prune.plan(model.config, **args)


def test_gpt2_classifiers_prune_like_bert():
    """GPT-2 ties the head size to width / heads as BERT does: removing heads narrows the width with them."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30))
    target = prune.plan(gpt2.config, 0.5, 0.5, None, None)
    assert (target.heads, target.head_size, target.hidden, target.ffn, target.kv_heads) == (1, 8, 8, 32, None)


def test_albert_factorisation_and_layers(model, tmp_path):
    weight = model.bert.embeddings.word_embeddings.weight.detach()
    word, basis = albert.factorise_embedding(weight, 32)
    torch.testing.assert_close(word @ basis, weight, rtol=1e-4, atol=1e-5)  # full rank: exact
    word8, basis8 = albert.factorise_embedding(weight, 8)
    assert word8.shape == (60, 8) and basis8.shape == (8, 32)
    torch.testing.assert_close(basis8 @ basis8.T, torch.eye(8), rtol=1e-4, atol=1e-5)  # orthonormal rows

    separate, chosen = albert.albert_from_bert(model, albert.parse_albert_spec("albert;embedding=8"))
    assert chosen == [0, 1, 2] and separate.config.num_hidden_groups == 3
    torch.testing.assert_close(separate.albert.encoder.albert_layer_groups[1].albert_layers[0].ffn.weight,
                               model.bert.encoder.layer[1].intermediate.dense.weight)
    shared, _ = albert.albert_from_bert(model, albert.parse_albert_spec("albert;embedding=8;shared"))
    mean = torch.stack([layer.attention.self.query.weight for layer in model.bert.encoder.layer]).mean(0)
    torch.testing.assert_close(shared.albert.encoder.albert_layer_groups[0].albert_layers[0].attention.query.weight, mean)
    assert count_params(shared) < count_params(separate) < count_params(model)
    shared.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    inputs = {k: v for k, v in batch(2).items() if k != "labels"}
    assert type(reloaded).__name__ == "AlbertForSequenceClassification"
    torch.testing.assert_close(reloaded(**inputs).logits, shared.eval()(**inputs).logits)


@pytest.mark.parametrize("spec, message", [
    ("albert;embedding=0", "embedding must be >= 1"),
    ("albert;embedding=x", "whole number"),
    ("albert;colour=2", "not one of embedding=E"),
])
def test_albert_spec_errors(spec, message):
    with pytest.raises(LmcError, match=message):
        albert.parse_albert_spec(spec)


def test_albert_conversion_errors(model):
    with pytest.raises(LmcError, match="only 3 layers"):
        albert.albert_from_bert(model, albert.AlbertSpec(layers=5))
    with pytest.raises(LmcError, match="smaller than the teacher's hidden width"):
        albert.albert_from_bert(model, albert.AlbertSpec(embedding=32))
    assert albert.parse_albert_spec("layers=2") is None  # not an ALBERT spec: the normal student path


def test_onnx_export_validates_and_runs(model, tmp_path):
    onnx_io = pytest.importorskip("lmcompress.backends.onnx_io")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with torch.no_grad():  # trained weights are all distinct; the exporter stores identical init tensors only once
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sample = {k: v for k, v in batch(2, 7, seed=3).items() if k != "labels"}
    sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    path = onnx_io.export_onnx(model, sample, tmp_path / "m.onnx")
    checks = [{k: v for k, v in batch(size, length, seed=5).items() if k != "labels"} for size, length in ((3, 11), (1, 4))]
    for c in checks:
        c["token_type_ids"] = torch.zeros_like(c["input_ids"])
    record = onnx_io.validate(model, path, checks, tolerance=1e-4)
    assert record["max_abs_logit_diff"] < 1e-4 and record["batches"] == [[3, 11], [1, 4]]
    with pytest.raises(LmcError, match="ONNX validation failed"):
        onnx_io.validate(model, path, checks, tolerance=1e-12)
    classifier = OnnxClassifier(path, threads=1)
    torch.testing.assert_close(classifier(**checks[0]).logits, model(**checks[0]).logits, rtol=1e-4, atol=1e-4)
    assert classifier.param_count == count_params(model)  # the same weights, wherever the exporter put them
    int8 = onnx_io.quantize_dynamic_int8(path, tmp_path / "q.onnx")
    q = OnnxClassifier(int8, threads=1)
    assert (q(**checks[0]).logits - model(**checks[0]).logits).abs().max() < 0.1
    assert int8.stat().st_size < path.stat().st_size


def test_importance_scoring_shows_progress_unless_quiet(model, capsys):
    import logging

    logger = logging.getLogger("lmcompress")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        prune.importance_scores(model, [batch(size=2), batch(size=2)])
        assert "importance" in capsys.readouterr().err  # the bar names the pass
        logger.setLevel(logging.WARNING)  # --quiet
        prune.importance_scores(model, [batch(size=2)])
        assert "importance" not in capsys.readouterr().err
    finally:
        logger.setLevel(level)


def test_importance_scores_hold_no_autograd_graph(model):
    """The sums must not keep each batch's activations alive: memory grew ~1 GB per batch of 8 x 128 tokens on a
    135M causal LM when they did."""
    import dataclasses

    scores = prune.importance_scores(model, [batch(size=2), batch(size=2, seed=2)])
    fields = dataclasses.astuple(scores)
    assert fields and all(isinstance(t, torch.Tensor) and not t.requires_grad and t.grad_fn is None for t in fields)
