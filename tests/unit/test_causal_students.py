"""Causal students cut from the teacher's weights (Llama family with grouped-query attention, Qwen2 biases, Qwen3
per-head norms, GPT-2's Conv1D layout) and causal-LM pruning, on tiny random models: exact equality when nothing is
removed, exactly what was asked is removed, KV groups kept whole, reload with plain transformers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

from lmcompress.surgery.student import build_student, parse_spec
from lmcompress.errors import LmcError
from lmcompress.models.families import family_of, require_family
from lmcompress.surgery import prune

GQA = dict(vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
           intermediate_size=40, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda: LlamaConfig(**GQA),
    "qwen2": lambda: Qwen2Config(**GQA),  # Q/K/V biases
    "qwen3": lambda: Qwen3Config(**GQA, head_dim=8),  # per-head q_norm / k_norm
    "gpt2": lambda: GPT2Config(vocab_size=99, n_embd=48, n_layer=3, n_head=6, n_positions=64),
}
WHOLE = {"gpt2": "layers=3;hidden=48;heads=6;ffn=192"}
TOKENS = torch.randint(1, 99, (2, 7))


def _teacher(model_type: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_nothing_removed_is_the_teacher_and_a_narrow_student_reloads(model_type, tmp_path):
    teacher = _teacher(model_type)
    whole, _ = build_student(teacher, parse_spec(WHOLE.get(model_type, "layers=3;hidden=48;heads=6;ffn=40")))
    torch.testing.assert_close(whole.eval()(TOKENS).logits, teacher(TOKENS).logits, rtol=0, atol=0)
    spec = "layers=2;hidden=24;heads=3;ffn=50" if model_type == "gpt2" else "layers=2;hidden=32;heads=2;kv-heads=1;ffn=20"
    student, kept = build_student(teacher, parse_spec(spec))
    family, config = family_of(teacher.config), student.config
    assert kept == [0, 2] and family.depth(config) == 2
    if model_type == "gpt2":
        assert (family.width(config), family.heads(config), family.ffn(config)) == (24, 3, 50)
    else:  # the head size stays the teacher's (rotary positions), written into the config
        assert (family.width(config), family.heads(config), family.kv_heads(config), family.ffn(config),
                config.head_dim) == (32, 2, 1, 20, 8)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers
    assert type(reloaded) is type(teacher)
    torch.testing.assert_close(reloaded(TOKENS).logits, student.eval()(TOKENS).logits)


def _rows(weight: torch.Tensor, head: int, size: int = 8) -> torch.Tensor:
    return weight[head * size:(head + 1) * size]


def test_kv_groups_stay_whole_with_their_own_query_heads():
    teacher = _teacher("llama")  # 6 query heads in 2 KV groups of 3, head size 8
    student, _ = build_student(teacher, parse_spec("layers=3;heads=2;kv-heads=1"))
    for t_layer, s_layer in zip(teacher.model.layers, student.model.layers):
        t_att, s_att = t_layer.self_attn, s_layer.self_attn
        kv = [g for g in range(2) if torch.equal(s_att.k_proj.weight, _rows(t_att.k_proj.weight, g))]
        assert len(kv) == 1 and torch.equal(s_att.v_proj.weight, _rows(t_att.v_proj.weight, kv[0]))
        for j in range(2):  # each kept query head is one of the kept group's own, whole
            q = _rows(s_att.q_proj.weight, j)
            source = [h for h in range(6) if torch.equal(q, _rows(t_att.q_proj.weight, h))]
            assert len(source) == 1 and source[0] // 3 == kv[0]
            torch.testing.assert_close(s_att.o_proj.weight[:, j * 8:(j + 1) * 8],
                                       t_att.o_proj.weight[:, source[0] * 8:(source[0] + 1) * 8])


def test_fewer_query_heads_keep_every_kv_group_when_they_divide():
    student, _ = build_student(_teacher("llama"), parse_spec("heads=4"))  # 2 of the 3 query heads of each group
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (4, 2)


@pytest.mark.parametrize("spec, message", [
    ("heads=5", "each kept KV head serves the same number of query heads"),
    ("heads=4;kv-heads=1", "at most the teacher's 3"),
    ("kv-heads=3", "wider than its teacher"),
])
def test_grouped_query_attention_refuses_uneven_groups_in_one_line(spec, message):
    with pytest.raises(LmcError, match=message):
        build_student(_teacher("llama"), parse_spec(spec))


def test_gpt2_has_no_kv_heads_to_choose():
    with pytest.raises(LmcError, match="no grouped-query attention"):
        build_student(_teacher("gpt2"), parse_spec("heads=3;kv-heads=2"))
    with pytest.raises(LmcError, match="no grouped-query attention"):
        prune.plan(_teacher("gpt2").config, 0.0, 0.0, None, None, kv_heads_ratio=0.5)


def _lm_batches(n: int = 2):
    torch.manual_seed(1)
    ids = torch.randint(1, 99, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return [{"input_ids": ids, "attention_mask": mask, "labels": labels}] * n


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_causal_pruning_removes_exactly_what_was_asked(model_type, tmp_path):
    teacher = _teacher(model_type)
    scores = prune.importance_scores(teacher, _lm_batches())
    assert scores.layer_change.shape == (3,) and (scores.layer_change > 0).all()
    ffn = require_family(teacher.config, "prune", narrow=True).ffn(teacher.config)
    nothing = prune.PrunePlan(None, 6, 8, 48, ffn, None if model_type == "gpt2" else 2, "cosine")
    same, kept = prune.prune_model(teacher, scores, nothing)
    assert kept == [0, 1, 2]
    torch.testing.assert_close(same.eval()(TOKENS).logits, teacher(TOKENS).logits, rtol=0, atol=0)
    target = prune.plan(teacher.config, 0.34, 0.5, 2, None, 0.0 if model_type == "gpt2" else 0.5)
    pruned, kept = prune.prune_model(teacher, scores, dataclasses.replace(target, layer_score="cosine"))
    family, config = family_of(teacher.config), pruned.config
    expected_layers = torch.topk(scores.layer_change, 2).indices.sort().values.tolist()
    assert kept == expected_layers and family.depth(config) == 2
    if model_type == "gpt2":  # BERT-like: the width follows the kept heads (head size tied to width / heads)
        assert (family.heads(config), family.width(config), family.ffn(config)) == (4, 32, 96)
    else:  # one KV group of two query heads kept, the width and head size untouched
        assert (family.heads(config), family.kv_heads(config), family.width(config), family.ffn(config)) == (2, 1, 48, 20)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(TOKENS).logits, pruned.eval()(TOKENS).logits)


def test_llama_without_grouped_query_attention_narrows_and_prunes_heads_with_their_k_and_v():
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(LlamaConfig(**(GQA | {"num_key_value_heads": 6}))).eval()
    student, _ = build_student(teacher, parse_spec("heads=2"))
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 2)
    assert student(TOKENS).logits.shape == (2, 7, 99)
    target = prune.plan(teacher.config, 0.5, 0.0, None, None)
    assert (target.heads, target.kv_heads) == (3, 3)
    pruned, _ = prune.prune_model(teacher, prune.importance_scores(teacher, _lm_batches()), target)
    assert pruned.config.num_key_value_heads == 3 and pruned.eval()(TOKENS).logits.shape == (2, 7, 99)


def test_narrowed_heads_keep_task_heads_of_causal_families():
    from transformers import GPT2ForTokenClassification, LlamaForQuestionAnswering

    torch.manual_seed(0)
    for model in (GPT2ForTokenClassification(CONFIGS["gpt2"]()), LlamaForQuestionAnswering(CONFIGS["llama"]())):
        student, _ = build_student(model.eval(), parse_spec("layers=1;hidden=24;heads=3"))
        assert family_of(student.config).width(student.config) == 24


def test_gguf_writer_refuses_what_it_cannot_carry_in_one_line():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from lmcompress.backends import gguf_file

    for config, message in ((CONFIGS["qwen2"](), "not qwen2"), (LlamaConfig(**GQA, attention_bias=True), "biases"),
                            (LlamaConfig(**GQA, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                 "rope_theta": 1e4}), "RoPE scaling")):
        with pytest.raises(LmcError, match=message):
            gguf_file.check_architecture(config)
    gguf_file.check_architecture(CONFIGS["llama"]())
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1},
                                                                                    unk_token="[UNK]")))
    with pytest.raises(LmcError, match="byte-level BPE"):
        gguf_file.check_tokenizer(wordpiece)


def test_gguf_tensor_types_follow_llama_quantize_rules():
    import gguf

    from lmcompress.backends.gguf_file import tensor_type

    def kind(name, shape, precision):
        return tensor_type(gguf, name, shape, precision).name

    assert [kind("blk.0.attn_norm.weight", (576,), p) for p in ("fp16", "q8_0", "q4_0")] == ["F32"] * 3
    assert kind("blk.0.ffn_down.weight", (576, 1536), "fp32") == "F32"
    assert kind("blk.0.ffn_down.weight", (576, 1536), "fp16") == "F16"
    assert kind("blk.0.ffn_down.weight", (576, 1536), "q8_0") == "Q8_0"
    assert kind("blk.0.ffn_down.weight", (576, 1536), "q4_0") == "Q4_0"
    assert kind("blk.0.ffn_down.weight", (576, 1000), "q4_0") == "F16"  # rows of 1000: not whole 32-value blocks
    assert kind("output.weight", (49152, 576), "q4_0") == "Q8_0"  # the output side keeps 8 bits
    assert kind("token_embd.weight", (49152, 576), "q4_0") == "Q4_0"  # a mere lookup table...
    assert tensor_type(gguf, "token_embd.weight", (49152, 576), "q4_0", tied=True).name == "Q8_0"  # ...unless tied
    assert kind("token_embd.weight", (49152, 576), "q8_0") == "Q8_0"
    # q4_m: Q4_0, with the value and down projections in 8 bits and the (tied) output in 6, as Q4_K_M mixes them
    assert [kind(f"blk.0.{n}.weight", (576, 576), "q4_m") for n in ("attn_q", "attn_v", "ffn_down", "ffn_up")] == [
        "Q4_0", "Q8_0", "Q8_0", "Q4_0"]
    assert tensor_type(gguf, "token_embd.weight", (49152, 576), "q4_m", tied=True).name == "Q5_1"
