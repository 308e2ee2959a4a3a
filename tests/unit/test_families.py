"""Architecture adapters (models/families.py) on tiny random models of every family: each adapter's paths exist in
the real transformers classes, and the code that reaches inside models through them works per family."""

from __future__ import annotations

import pytest
import torch
from transformers import (AlbertConfig, AutoModelForSequenceClassification, BertConfig, DebertaV2Config,
                          DistilBertConfig, ElectraConfig, GPT2Config, LlamaConfig, ModernBertConfig, MPNetConfig,
                          Qwen2Config, RobertaConfig, XLMRobertaConfig)

from lmcompress.distillation.components import QKVRecorder
from lmcompress.distillation.sharding import repeated_blocks
from lmcompress.surgery.student import build_student, kept_heads_per_layer, parse_spec
from lmcompress.errors import LmcError
from lmcompress.models.families import FAMILIES, check_max_length, family_name, family_of, require_family
from lmcompress.surgery import prune

SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64, pad_token_id=0)
CONFIGS = {
    "bert": lambda: BertConfig(**SHAPE),
    "roberta": lambda: RobertaConfig(**SHAPE),
    "xlm-roberta": lambda: XLMRobertaConfig(**SHAPE),
    "electra": lambda: ElectraConfig(**SHAPE, embedding_size=32),
    "deberta-v2": lambda: DebertaV2Config(**SHAPE),
    "mpnet": lambda: MPNetConfig(**SHAPE),
    "distilbert": lambda: DistilBertConfig(vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37,
                                           max_position_embeddings=64, pad_token_id=0),
    "modernbert": lambda: ModernBertConfig(**SHAPE, global_attn_every_n_layers=2),
    "albert": lambda: AlbertConfig(**SHAPE, embedding_size=16),
    "gpt2": lambda: GPT2Config(vocab_size=99, n_embd=32, n_layer=3, n_head=4, n_positions=64, pad_token_id=0),
    "llama": lambda: LlamaConfig(**SHAPE, num_key_value_heads=2),
    "qwen2": lambda: Qwen2Config(**SHAPE, num_key_value_heads=2),
}


def _model(model_type: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(CONFIGS[model_type]()).eval()


def test_every_adapter_is_exercised_here():
    served = {t for f in FAMILIES for t in f.model_types}
    assert served - set(CONFIGS) <= {"camembert", "qwen3", "mistral"}  # same classes as roberta / qwen2 / llama


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_the_adapter_finds_every_part(model_type):
    model = _model(model_type)
    family = family_of(model.config)
    assert family is not None and family_name(model_type) == family.name
    layers = family.layer_list(model)
    assert isinstance(layers, torch.nn.ModuleList)
    assert family.depth(model.config) == 3
    assert len(layers) == (1 if family.shares_layers else 3)  # ALBERT: one group of layers shared across depth
    first = layers[0].albert_layers[0] if family.shares_layers else layers[0]
    for path in (family.query, family.key, family.value, family.attention_out, family.ffn_in, family.ffn_out):
        if path is not None:
            assert isinstance(family.part(first, path), torch.nn.Module), path
    assert family.width(model.config) == 32 and family.heads(model.config) == 4
    assert repeated_blocks(model) is layers  # FSDP units: the family's layers


@pytest.mark.parametrize("model_type", sorted(set(CONFIGS) - {"albert"}))
def test_a_student_of_one_layer_keeps_that_layer_and_reloads(model_type, tmp_path):
    teacher = _model(model_type)
    student, kept = build_student(teacher, parse_spec("pick=2"))
    family = family_of(teacher.config)
    assert kept == [2] and family.depth(student.config) == 1
    copied, source = family.layer_list(student)[0].state_dict(), family.layer_list(teacher)[2].state_dict()
    assert copied
    for name, value in copied.items():  # (a ModernBERT first layer has no attention norm: one parameter fewer)
        torch.testing.assert_close(value, source[name], msg=name)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # plain transformers
    batch = {"input_ids": torch.randint(1, 99, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    torch.testing.assert_close(reloaded(**batch).logits, student.eval()(**batch).logits)


NARROWABLE = ["bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet", "distilbert", "modernbert", "albert"]
BATCH = {"input_ids": torch.randint(1, 99, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}


@pytest.mark.parametrize("model_type", NARROWABLE)
def test_narrowing_keeps_everything_when_nothing_is_removed_and_shrinks_what_is_asked(model_type):
    teacher = _model(model_type)
    whole, _ = build_student(teacher, parse_spec("layers=3;hidden=32;heads=4;ffn=37"))
    torch.testing.assert_close(whole.eval()(**BATCH).logits, teacher(**BATCH).logits, rtol=0, atol=0)
    student, _ = build_student(teacher, parse_spec("layers=1;hidden=16;heads=2;ffn=20"))
    family = family_of(teacher.config)
    config = student.config
    assert (family.depth(config), family.width(config), family.heads(config), family.ffn(config)) == (1, 16, 2, 20)
    assert student.eval()(**BATCH).logits.shape == (2, 2)
    target = prune.plan(teacher.config, 0.5, 0.5, 2, None)
    assert (target.heads, target.hidden, target.ffn) == (2, 16, 18)


def test_mpnet_layers_keep_one_head_set_matching_its_shared_relative_position_bias():
    teacher = _model("mpnet")
    student, _ = build_student(teacher, parse_spec("layers=2;hidden=16;heads=2;ffn=20"))
    bias, teacher_bias = (m.mpnet.encoder.relative_attention_bias.weight for m in (student, teacher))
    assert bias.shape == (teacher_bias.shape[0], 2)
    kept = [h for h in range(4) if any(torch.equal(bias[:, i], teacher_bias[:, h]) for i in range(2))]
    assert len(kept) == 2
    scores = {0: torch.tensor([4.0, 3.0, 0.0, 0.0]), 1: torch.tensor([0.0, 0.0, 2.0, 2.0])}
    assert kept_heads_per_layer(family_of(teacher.config), scores, 2) == {0: [0, 1], 1: [0, 1]}  # summed
    assert kept_heads_per_layer(family_of(_model("bert").config), scores, 2) == {0: [0, 1], 1: [2, 3]}


NARROWABLE_FAMILIES = "bert, roberta, electra, deberta-v2, mpnet, distilbert, modernbert, albert, gpt2, llama models"


def test_albert_s_shared_layer_is_scored_over_every_pass_and_pruned_once_for_all(tmp_path):
    model = _model("albert")  # one layer, applied 3 times
    family = family_of(model.config)
    seen = []

    def keep(module, args):  # the FFN activations of every pass, as the importance hooks see them
        args[0].retain_grad()
        seen.append(args[0])

    shared = family.pass_modules(model)
    assert len(shared) == 1
    handle = family.part(shared[0], family.ffn_out).register_forward_pre_hook(keep)
    batch = dict(BATCH, labels=torch.tensor([0, 1]))
    scores = prune.importance_scores(model, [batch])
    handle.remove()
    assert len(seen) == 3 and scores.ffn.shape == (1, 37) and scores.heads.shape == (1, 4)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = sum((act * act.grad * mask).sum(1).abs().sum(0) for act in seen)  # summed over the passes
    torch.testing.assert_close(scores.ffn[0], expected)
    pruned, passes = prune.prune_model(model, scores, prune.plan(model.config, 0.5, 0.5, 2, None))
    config = pruned.config
    assert passes == [0, 2] and (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                                 config.intermediate_size, config.embedding_size) == (2, 16, 2, 18, 16)
    kept_ffn = scores.ffn[0].topk(18).indices.sort().values  # the most important neurons, once for every pass
    torch.testing.assert_close(family.part(family.pass_modules(pruned)[0], family.ffn_in).bias,
                               family.part(shared[0], family.ffn_in).bias[kept_ffn])
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # plain transformers
    torch.testing.assert_close(reloaded(**BATCH).logits, pruned.eval()(**BATCH).logits)


def test_an_albert_cut_picks_no_layers_and_needs_one_shared_layer():
    albert = _model("albert")
    with pytest.raises(LmcError, match="every pass is the same layer, so pick= has nothing to choose"):
        build_student(albert, parse_spec("pick=0,2"))
    albert.config.num_hidden_groups = 2
    refusal = "has 2 ALBERT layer group\\(s\\) of 1 layer\\(s\\); only a model with one shared layer can be cut"
    with pytest.raises(LmcError, match=refusal):
        build_student(albert, parse_spec("layers=1;hidden=16"))
    with pytest.raises(LmcError, match="narrowed or pruned"):
        prune.plan(albert.config, 0.5, 0.5, None, None)
    albert.config.num_hidden_groups, albert.config.inner_group_num = 1, 2
    with pytest.raises(LmcError, match="1 ALBERT layer group\\(s\\) of 2 layer\\(s\\)"):
        build_student(albert, parse_spec("layers=2"))


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2", "mpnet", "distilbert", "llama"])
def test_qkv_of_the_last_layer_are_recorded_for_minilm(model_type):
    model = _model(model_type)
    recorder = QKVRecorder(model)
    model(input_ids=torch.randint(1, 99, (2, 5)), attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert recorder.outputs["query"].shape == (2, 5, 32)
    assert set(recorder.outputs) == {"query", "key", "value"}


@pytest.mark.parametrize("model_type", ["gpt2", "modernbert", "albert"])
def test_fused_or_shared_attention_refuses_minilm_in_one_line(model_type):
    with pytest.raises(LmcError, match="separate query/key/value"):
        QKVRecorder(_model(model_type))


def test_an_architecture_without_an_adapter_is_one_line_naming_what_it_can_do():
    config = BertConfig(**SHAPE)
    config.model_type = "funnel"
    with pytest.raises(LmcError, match=f"prune is supported for {NARROWABLE_FAMILIES}, "
                                       "not funnel; funnel can still be fine-tuned, distilled into a student with "
                                       "fewer layers"):
        require_family(config, "prune", narrow=True)


def test_without_an_adapter_layers_are_still_picked_by_parameter_name():
    teacher = _model("bert")
    teacher.config.model_type = "ernie-like"  # a BERT layout under a model_type no adapter serves
    student, kept = build_student(teacher, parse_spec("pick=1"))
    assert kept == [1] and student.config.num_hidden_layers == 1
    torch.testing.assert_close(student.bert.encoder.layer[0].output.dense.weight,
                               teacher.bert.encoder.layer[1].output.dense.weight)


def test_modernbert_keeps_whole_heads_because_of_rotary_positions():
    teacher = _model("modernbert")
    with pytest.raises(LmcError, match="rotates each head's dims in pairs"):
        build_student(teacher, parse_spec("layers=1;hidden=16;heads=4"))  # head size 8 -> 4
    with pytest.raises(LmcError, match="heads stay whole"):
        prune.plan(teacher.config, 0.5, 0.0, None, 8)
    student, _ = build_student(teacher, parse_spec("layers=1;heads=2;hidden=16;ffn=20"))
    fused = student.model.layers[0].attn.Wqkv.weight
    assert fused.shape == (3 * 16, 16) and student.model.layers[0].mlp.Wi.weight.shape == (2 * 20, 16)


@pytest.mark.unit
@pytest.mark.parametrize("config, longest", [
    (BertConfig(max_position_embeddings=64), 64),
    (RobertaConfig(max_position_embeddings=66, pad_token_id=1), 64),  # positions start after the padding index
    (GPT2Config(n_positions=32), 32),
    (DebertaV2Config(max_position_embeddings=64, position_biased_input=False), None),  # relative attention only
    (LlamaConfig(max_position_embeddings=64), None),  # rotary: no table to index past
])
def test_max_length_is_refused_past_the_position_table_only(config, longest):
    if longest is None:
        check_max_length(config, 10_000)
        return
    check_max_length(config, longest)
    with pytest.raises(LmcError, match=f"takes at most {longest} tokens per text"):
        check_max_length(config, longest + 1)


def test_a_base_albert_model_is_narrowed_too():
    """distill-embeddings loads encoders without a task head: their parameter names have no `albert.` prefix."""
    from transformers import AlbertModel

    torch.manual_seed(0)
    base = AlbertModel(CONFIGS["albert"]()).eval()
    student, passes = build_student(base, parse_spec("layers=1;hidden=16;heads=2;ffn=20"))
    assert passes == [2] and (student.config.hidden_size, student.config.intermediate_size) == (16, 20)
    assert student(**BATCH).last_hidden_state.shape == (2, 7, 16)
