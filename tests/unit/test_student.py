import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, GPT2Config
from transformers import GPT2ForSequenceClassification

from lmcompress.surgery.student import build_student, default_layer_map, evenly_spaced_layers, parse_spec
from lmcompress.errors import LmcError


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=37, num_labels=3)
    return BertForSequenceClassification(config).eval()


def _inputs():
    return {"input_ids": torch.randint(5, 99, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}


def test_spec_parsing_and_errors():
    assert parse_spec("pick=0,2,4").pick == (0, 2, 4)
    assert parse_spec("layers=2; hidden=192").hidden == 192
    for bad, msg in [("depth=2", "not one of"), ("layers=two", "whole numbers"), ("pick=1;layers=2", "not both"),
                     ("layers=0", "must be >= 1")]:
        with pytest.raises(LmcError, match=msg):
            parse_spec(bad)


def test_evenly_spaced_layers_include_the_last():
    assert evenly_spaced_layers(6, 2) == [2, 5]
    assert evenly_spaced_layers(6, 1) == [5]
    assert evenly_spaced_layers(6, 3) == [1, 3, 5]
    assert evenly_spaced_layers(6, 6) == [0, 1, 2, 3, 4, 5]


def test_all_layers_no_narrowing_is_the_teacher(teacher):
    student, layers = build_student(teacher, parse_spec("layers=4"))
    batch = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(**batch).logits, teacher(**batch).logits)
    assert layers == [0, 1, 2, 3]


def test_picked_layers_are_copies(teacher):
    student, layers = build_student(teacher, parse_spec("pick=1,3"))
    assert layers == [1, 3] and student.config.num_hidden_layers == 2
    for j, i in enumerate(layers):
        torch.testing.assert_close(student.bert.encoder.layer[j].intermediate.dense.weight,
                                   teacher.bert.encoder.layer[i].intermediate.dense.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    assert default_layer_map(layers, 2, 4) == [2, 4]  # hidden-state indices (0 = embeddings)


def test_narrow_student_shapes_slices_and_reload(teacher, tmp_path):
    student, _ = build_student(teacher, parse_spec("layers=2;hidden=16;heads=2;ffn=20"))
    cfg = student.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers) == (16, 2, 20, 2)
    # every student weight is a sub-matrix of the teacher's: each of its rows appears in the teacher's matrix
    t_emb, s_emb = teacher.bert.embeddings.word_embeddings.weight, student.bert.embeddings.word_embeddings.weight
    cols = [next(c for c in range(32) if torch.equal(t_emb[:, c], s_emb[:, k])) for k in range(16)]
    assert cols == sorted(cols) and len(set(cols)) == 16
    out = student(**_inputs()).logits
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    batch = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**batch).logits, student.eval()(**batch).logits)


def test_invalid_students(teacher):
    for spec, msg in [("pick=0,9", "layers 0..3"), ("layers=5", "only 4 layers"), ("hidden=64", "wider than"),
                      ("hidden=30;heads=4", "not divisible"), ("hidden=32;heads=2", "head size 16 > the teacher's 8"),
                      ("pick=1,1", "twice")]:
        with pytest.raises(LmcError, match=msg):
            build_student(teacher, parse_spec(spec))


def test_gpt2_layer_pick():
    torch.manual_seed(0)
    teacher = GPT2ForSequenceClassification(GPT2Config(vocab_size=99, n_embd=32, n_layer=4, n_head=4, num_labels=2,
                                                       pad_token_id=0)).eval()
    student, _ = build_student(teacher, parse_spec("pick=0,3"))
    torch.testing.assert_close(student.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[3].mlp.c_fc.weight)


@pytest.mark.parametrize("family", ["modernbert", "qwen2"])
def test_layer_pick_keeps_per_layer_config_and_weights(family):
    """ModernBERT and Qwen2 configs list a type per layer (`layer_types`) and name their layers `model.layers.N`:
    a student of 2 picked layers keeps those layers' types and weights, and plain transformers reloads it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if family == "modernbert":
        config = AutoConfig.for_model("modernbert", vocab_size=99, hidden_size=32, num_hidden_layers=4,
                                      num_attention_heads=4, intermediate_size=48, global_attn_every_n_layers=3,
                                      num_labels=2, pad_token_id=0)
        teacher = AutoModelForSequenceClassification.from_config(config).eval()
    else:
        config = AutoConfig.for_model("qwen2", vocab_size=99, hidden_size=32, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                      use_sliding_window=True, sliding_window=8, max_window_layers=2)
        teacher = AutoModelForCausalLM.from_config(config).eval()
    types = list(teacher.config.layer_types)
    student, kept = build_student(teacher, parse_spec("pick=1,3"))
    assert kept == [1, 3]
    assert list(student.config.layer_types) == [types[1], types[3]]
    assert student.config.num_hidden_layers == 2
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, value in student_state.items():
        if ".layers.1." in name:
            torch.testing.assert_close(value, teacher_state[name.replace(".layers.1.", ".layers.3.")])
    type(student)(student.config)  # the cut config passes transformers' own checks


def test_base_models_without_a_prefix_copy_the_picked_layers():
    """AutoModel checkpoints (distill-embeddings loads them) name layers `h.N.` / `layer.N.` with no prefix."""
    from transformers import GPT2Model

    torch.manual_seed(0)
    teacher = GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=3, n_head=4)).eval()
    student, kept = build_student(teacher, parse_spec("pick=2"))
    assert kept == [2]
    torch.testing.assert_close(student.h[0].mlp.c_fc.weight, teacher.h[2].mlp.c_fc.weight)


def test_a_folder_student_cut_from_this_teacher_keeps_its_layer_pairing(tmp_path):
    import json

    from lmcompress.stages.distill import layers_cut_from

    teacher_dir, other = tmp_path / "teacher", tmp_path / "other"
    runs = {"pruned": {"stage": "prune", "parent": str(teacher_dir), "pruning": {"kept_layers": [0, 1, 3]}},
            "distilled": {"stage": "distill", "parent": str(teacher_dir), "student": {"teacher_layers_copied": [0, 3]}},
            "of-another-teacher": {"stage": "prune", "parent": str(other), "pruning": {"kept_layers": [0, 2]}},
            "out-of-range": {"stage": "prune", "parent": str(teacher_dir), "pruning": {"kept_layers": [0, 9]}},
            "finetuned": {"stage": "finetune", "parent": str(teacher_dir)}}
    for name, manifest in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "lmcompress.json").write_text(json.dumps(manifest))
    (tmp_path / "plain").mkdir()
    found = {name: layers_cut_from(tmp_path / name, teacher_dir, 4) for name in [*runs, "plain"]}
    assert found == {"pruned": [0, 1, 3], "distilled": [0, 3], "of-another-teacher": None, "out-of-range": None,
                     "finetuned": None, "plain": None}
    assert default_layer_map(found["pruned"], 3, 4) == [1, 2, 4]  # evenly spaced would be [1, 3, 4]


def test_an_albert_teacher_is_cut_by_applying_its_shared_layer_fewer_times():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    from lmcompress.surgery.student import donor_of

    torch.manual_seed(0)
    teacher = AlbertForSequenceClassification(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32,
                                                           num_hidden_layers=4, num_attention_heads=4,
                                                           intermediate_size=48, num_labels=2)).eval()
    ids = torch.randint(0, 50, (2, 6))
    whole, kept = build_student(teacher, parse_spec("layers=4"))
    assert kept == [0, 1, 2, 3] and torch.equal(whole.eval()(input_ids=ids).logits, teacher(input_ids=ids).logits)
    cut, kept = build_student(teacher, parse_spec("layers=2"))
    assert cut.config.num_hidden_layers == 2 and kept == [1, 3]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in cut.state_dict().items())  # every weight kept
    hidden = teacher(input_ids=ids, output_hidden_states=True).hidden_states[2]  # two passes of the shared layer
    assert torch.allclose(cut.eval()(input_ids=ids, output_hidden_states=True).hidden_states[2], hidden)
    with pytest.raises(LmcError, match="pick= has nothing to choose; cut it with layers=N"):
        build_student(teacher, parse_spec("pick=0,1"))
    narrowed, kept = build_student(teacher, parse_spec("layers=2;ffn=24"))  # the shared layer narrowed once
    assert kept == [1, 3] and (narrowed.config.num_hidden_layers, narrowed.config.intermediate_size) == (2, 24)
    with pytest.raises(LmcError, match="layers=5: the teacher has only 4 layers"):
        build_student(teacher, parse_spec("layers=5"))
    assert donor_of("minilm-l3;layers=2") == ("minilm-l3", "layers=2") and donor_of("layers=2") == (None, "layers=2")
    grouped = AlbertForSequenceClassification(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32,
                                                           num_hidden_layers=4, num_hidden_groups=2,
                                                           num_attention_heads=4, intermediate_size=48))
    with pytest.raises(LmcError, match="2 ALBERT layer group"):
        build_student(grouped, parse_spec("layers=2"))
