"""The bad-input matrix: every stage, each case ends with exit != 0, exactly one `lmcompress: error:` line naming the
problem, no traceback, and nothing written where the output should be (no run dir, no `.partial` sibling)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from ..conftest import make_sentiment_rows
from .cli_helpers import one_error_line, run_cli


@dataclass
class Ctx:
    tmp: Path
    model: Path  # a headless tiny BERT checkpoint
    data: Path  # a labelled CSV
    teacher: Path  # a fine-tuned tiny run
    out: Path  # where the failing command is told to write


def _inputs(ctx: Ctx) -> None:
    t = ctx.tmp
    (t / "empty.csv").write_text("")
    (t / "nolabel.csv").write_text("text,stars\na,1\nb,2\n")
    (t / "one_label" / "pos").mkdir(parents=True)
    for i in range(5):
        (t / "one_label" / "pos" / f"{i}.txt").write_text(f"text {i}")
    (t / "typo.yaml").write_text("model: m\nout: o\ndata:\n  data: d\ntrain:\n  learnig_rate: 0.1\n")
    (t / "wrong_type.yaml").write_text(f"model: {ctx.model}\nout: o\ndata:\n  data: {ctx.data}\ntrain:\n  epochs: many\n")
    (t / "not_yaml.yaml").write_text("model: [unclosed\n")
    (t / "binary.csv").write_bytes(b"text,label\n\xff\xfe,\x00\n")
    (t / "afile").write_text("x")
    (t / "corrupt_model").mkdir()
    shutil.copy(ctx.model / "config.json", t / "corrupt_model" / "config.json")
    (t / "corrupt_model" / "model.safetensors").write_bytes(b"\x00" * 40)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ctx.model / name, t / "corrupt_model" / name)
    frame = pd.DataFrame(make_sentiment_rows(60))
    frame["label"] = ["pos", "neg", "meh"] * 20
    frame.to_csv(t / "three_labels.csv", index=False)
    (t / "other_tok").mkdir()  # a student whose tokenizer is not the teacher's
    shutil.copytree(ctx.teacher, t / "other_tok", dirs_exist_ok=True)
    (t / "other_tok" / "tokenizer.json").write_text(
        (ctx.teacher / "tokenizer.json").read_text().replace('"good"', '"goood"'))
    (t / "recipe_typo.yaml").write_text(
        f"steps:\n  - {{name: t, stage: finetune, model: {ctx.model}, data: {{data: {ctx.data}}}, trian: {{}}}}\n")
    for label, words in (("pos", "café crème très bon"), ("neg", "déjà vu, ennuyeux")):  # Latin-1 e-mails
        (t / "latin1_mail" / label).mkdir(parents=True)
        for i in range(6):
            (t / "latin1_mail" / label / f"{i}.txt").write_bytes(f"{words} {i}".encode("latin-1"))
    _tiny_classifiers(ctx.model, t)
    (t / ".interrupted.partial" / "checkpoint").mkdir(parents=True)  # a checkpoint cut short by a kill
    (t / ".interrupted.partial" / "checkpoint" / "state.json").write_text('{"loop": {}, "files": {"model": "m"}}')


def _tiny_classifiers(tokenizer_dir: Path, root: Path) -> None:
    """Fine-tuned-looking classifiers (labels neg, pos): GPT-2 with 64 positions, and an ALBERT with two layer groups,
    which prune cannot narrow (only one layer shared by every pass is pruned once for all)."""
    from transformers import (AlbertConfig, AlbertForSequenceClassification, AutoTokenizer, GPT2Config,
                              GPT2ForSequenceClassification)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    labels = {"num_labels": 2, "pad_token_id": tokenizer.pad_token_id, "id2label": {0: "neg", 1: "pos"},
              "label2id": {"neg": 0, "pos": 1}}
    models = {"gpt2_run": GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1,
                                                                   n_head=2, n_positions=64, **labels)),
              "albert_run": AlbertForSequenceClassification(AlbertConfig(
                  vocab_size=len(tokenizer), embedding_size=8, hidden_size=16, num_hidden_layers=2, num_hidden_groups=2,
                  num_attention_heads=2, intermediate_size=32, **labels))}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def F(*args: str):  # finetune with the tiny model and data unless the case replaces them
    return ["finetune", *args]


CASES: dict[str, tuple] = {
    # finetune: data
    "missing data file": (lambda c: F("--model", str(c.model), "--data", str(c.tmp / "nope.csv")), ["no such file or folder"]),
    "label column not in CSV": (lambda c: F("--model", str(c.model), "--data", str(c.tmp / "nolabel.csv"),
                                            "--label-column", "label"), ["label column 'label' not found"]),
    "empty data file": (lambda c: F("--model", str(c.model), "--data", str(c.tmp / "empty.csv")), ["is empty"]),
    "single-class data": (lambda c: F("--model", str(c.model), "--data", str(c.tmp / "one_label")), ["single value"]),
    "non-UTF-8 data": (lambda c: F("--model", str(c.model), "--data", str(c.tmp / "binary.csv")), ["not UTF-8"]),
    "a folder of Latin-1 files without --encoding": (
        lambda c: F("--model", str(c.model), "--data", str(c.tmp / "latin1_mail")),
        ["12 of 12 files", "are not UTF-8 text", "--encoding auto"]),
    "unknown --encoding": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--encoding", "klingon"),
                           ["--encoding klingon is not a known text encoding"]),
    "Hub id not in the cache, offline": (lambda c: F("--model", "nobody-org/no-model", "--data", str(c.data)),
                                         ["nobody-org/no-model is not in the Hugging Face cache", "HF_HUB_OFFLINE"]),
    # finetune: models
    "unknown model name": (lambda c: F("--model", "bert-base-chinese", "--data", str(c.data)), ["unknown model"]),
    "dataset given as model": (lambda c: F("--model", "rotten-tomatoes", "--data", str(c.data)),
                               ["is a dataset, not a model"]),
    "model folder without config": (lambda c: F("--model", str(c.tmp), "--data", str(c.data)), ["without config.json"]),
    "corrupt safetensors": (lambda c: F("--model", str(c.tmp / "corrupt_model"), "--data", str(c.data)),
                            ["cannot load model from"]),
    # finetune: config and sizes
    "config key typo": (lambda c: F("--config", str(c.tmp / "typo.yaml")), ["unknown key(s) learnig_rate"]),
    "config wrong type": (lambda c: F("--config", str(c.tmp / "wrong_type.yaml")), ["epochs: expected a number"]),
    "config not YAML": (lambda c: F("--config", str(c.tmp / "not_yaml.yaml")), ["is not valid YAML"]),
    "flag wrong type": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--epochs", "many"),
                        ["invalid float value"]),
    "negative batch size": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--batch-size", "-4"),
                            ["batch_size must be >= 1"]),
    "zero max length": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--max-length", "0"),
                        ["max_length must be >= 8"]),
    "fraction out of range": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--test-fraction", "0.7"),
                              ["test_fraction must be between 0 and 0.5"]),
    # outputs
    "out dir is a file": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--out", str(c.tmp / "afile")),
                          ["is a file"]),
    "read-only out dir": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--out", "/proc/lmcompress-run"),
                          ["/proc"]),
    "resume without checkpoint": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--resume"),
                                  ["no interrupted run to continue"]),
    "truncated checkpoint": (lambda c: F("--model", str(c.model), "--data", str(c.data), "--resume",
                                         "--out", str(c.tmp / "interrupted")), ["checkpoint", "corrupt or incomplete"]),
    # evaluate
    "evaluate unknown labels in test split": (lambda c: ["evaluate", "--model", str(c.teacher), "--data",
                                                         str(c.tmp / "three_labels.csv"), "--no-latency"],
                                              ["trained for labels ['neg', 'pos'] but the data has"]),
    "evaluate a non-run": (lambda c: ["evaluate", "--model", str(c.tmp)], ["not a run directory"]),
    # distill
    "distill missing teacher": (lambda c: ["distill", "--teacher", str(c.tmp / "none"), "--student", "layers=1"],
                                ["is not a fine-tuned run"]),
    "distill student spec typo": (lambda c: ["distill", "--teacher", str(c.teacher), "--student", "layrs=1"],
                                  ["student spec item 'layrs=1'"]),
    "distill layer out of range": (lambda c: ["distill", "--teacher", str(c.teacher), "--student", "pick=0,5"],
                                   ["the teacher has layers 0..1"]),
    # another tokenizer is fine for sequence tasks (each side reads the text), not with a per-token loss where it
    # cuts a text into other pieces ("good" is not in its vocabulary)
    "distill mismatched tokenizers": (lambda c: ["distill", "--teacher", str(c.teacher), "--student",
                                                 str(c.tmp / "other_tok"), "--hidden-weight", "1"],
                                      ["into other pieces than the teacher's", "token positions do not line up"]),
    "distill student wider than teacher": (lambda c: ["distill", "--teacher", str(c.teacher), "--student",
                                                      "layers=1;hidden=64"], ["cannot be wider than its teacher"]),
    "distill bad layer map": (lambda c: ["distill", "--teacher", str(c.teacher), "--student", "layers=1",
                                         "--hidden-weight", "1", "--layer-map", "1:9"], ["teacher layers 1..2"]),
    # prune
    "prune heads ratio 1": (lambda c: ["prune", "--model", str(c.teacher), "--heads", "1.0"], ["heads is the share"]),
    "prune negative ffn ratio": (lambda c: ["prune", "--model", str(c.teacher), "--ffn", "-0.1"], ["ffn is the share"]),
    "prune more layers than exist": (lambda c: ["prune", "--model", str(c.teacher), "--layers", "5"],
                                     ["--layers 5: the model has only 2 layers"]),
    "prune nothing asked": (lambda c: ["prune", "--model", str(c.teacher)], ["nothing to prune"]),
    "prune an ALBERT with two layer groups": (
        lambda c: ["prune", "--model", str(c.tmp / "albert_run"), "--data", str(c.data), "--heads", "0.5"],
        ["2 ALBERT layer group(s) of 1 layer(s)", "only a model with one shared layer"]),
    "finetune texts longer than the position embeddings": (
        lambda c: F("--model", str(c.tmp / "gpt2_run"), "--data", str(c.data), "--max-length", "128"),
        ["--max-length 128", "at most 64 tokens"]),
    "evaluate texts longer than the position embeddings": (
        lambda c: ["evaluate", "--model", str(c.tmp / "gpt2_run"), "--data", str(c.data), "--max-length", "100"],
        ["--max-length 100", "at most 64 tokens"]),
    # quantize / export
    "quantize unknown method": (lambda c: ["quantize", "--model", str(c.teacher), "--method", "int4"],
                                ["invalid choice: 'int4'"]),
    "quantize missing model": (lambda c: ["quantize", "--model", str(c.tmp / "none")], ["is not a run directory"]),
    "export validation failure": (lambda c: ["export", "--model", str(c.teacher), "--tolerance", "1e-15"],
                                  ["ONNX validation failed", "nothing was written"]),
    "export negative tolerance": (lambda c: ["export", "--model", str(c.teacher), "--tolerance", "-1"],
                                  ["tolerance must be > 0"]),
    # compare / run
    "compare a missing run": (lambda c: ["compare", str(c.teacher), str(c.tmp / "none")], ["is not a run directory"]),
    "compare unknown teacher": (lambda c: ["compare", str(c.teacher), "--teacher", "nobody"], ["is not one of the runs"]),
    "recipe key typo": (lambda c: ["run", str(c.tmp / "recipe_typo.yaml")], ["step 1 (t)", "unknown key(s) trian"]),
    "recipe missing": (lambda c: ["run", str(c.tmp / "none.yaml")], ["neither a file nor a built-in recipe"]),
}
NO_OUT = {"evaluate", "run"}  # stages without --out (evaluate writes beside the run unless told)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, tiny_bert_dir, sentiment_csv, tiny_teacher_run, tmp_path,
                                                  capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ctx = Ctx(inputs, tiny_bert_dir, sentiment_csv, tiny_teacher_run, tmp_path / "out" / "run")
    _inputs(ctx)
    build, fragments = CASES[case]
    args = build(ctx)
    if "--out" not in args and "--config" not in args and args[0] not in NO_OUT:
        args += ["--out", str(ctx.out)]
    if args[0] == "finetune" and "--config" not in args:
        args += ["--epochs", "1", "--max-length", "32"] if "--max-length" not in args else ["--epochs", "1"]
    code, _, err = run_cli(args + ["--quiet"], capsys)
    assert code != 0
    one_error_line(err, *fragments)
    assert not ctx.out.exists() and not (ctx.out.parent / f".{ctx.out.name}.partial").exists()
    assert not list(Path(tiny_teacher_run).parent.glob(".*partial"))


def test_the_matrix_covers_every_stage_and_30_cases():
    stages = {CASES[c][0](Ctx(Path("t"), Path("m"), Path("d"), Path("r"), Path("o")))[0] for c in CASES}
    assert {"finetune", "evaluate", "distill", "prune", "quantize", "export", "compare", "run"} <= stages
    assert len(CASES) >= 30
