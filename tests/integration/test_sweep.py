"""Combination sweep: every CLI stage x preset family x objective/task x tokenizer choice x main flags.

Each combination does what `sweep_expected.py` says it must: it runs (exit 0, a complete output) or it is refused
with one `lmcompress: error:` line holding the expected words; none may end in an "internal error" or a traceback.
The axes are read from the config dataclasses (the Literal choices of objective, task, precision, quantize method,
...; the boolean switches), so a new choice joins the sweep by itself. CI runs a seeded sample of the product;
`pytest -m slow tests/integration/test_sweep.py` runs all of it.
"""

from __future__ import annotations

import itertools
import json
import random
import typing
from pathlib import Path

import pandas as pd
import pytest

from lmcompress.config import (CompareConfig, DataConfig, DistillConfig, ExportConfig, LMDistillConfig, PretrainConfig,
                               PruneLMConfig, QuantizeConfig, TrainConfig)
from lmcompress.models.presets import FAMILIES
from lmcompress.stages import STAGES

from ..conftest import make_sentiment_rows
from .cli_helpers import run_cli
from .sweep_expected import expected_outcome

# serve runs until it is stopped; the predictor it serves is swept through predict, the server in test_serving.py
NOT_SWEPT = {"serve"}
CI_SAMPLE = 24  # about this many combinations run in CI (seeded, by stage); all of them under -m slow
SEED = 0


def choices(cls: type, name: str) -> tuple:
    """The values a config field accepts: a Literal's choices, or both booleans."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if hint is bool or args == [bool]:
        return (False, True)
    raise TypeError(f"{cls.__name__}.{name} has no finite choices")


TOKENIZERS = ("default", "trained", "given")  # preset vocabularies: minilm-l6's, trained on the corpus, a folder
TASKS = tuple(t for t in choices(DataConfig, "task") if t != "auto")
STUDENTS = ("layers=1", "layers=1;hidden=16;heads=2;ffn=32", "preset", "albert;embedding=8;shared", "static;dim=8")


def combinations() -> list[tuple[str, dict]]:
    """(stage, axes) for the whole product, in a fixed order."""
    out: list[tuple[str, dict]] = []

    def product(stage: str, **axes) -> None:
        for values in itertools.product(*axes.values()):
            out.append((stage, dict(zip(axes, values))))

    precisions = choices(TrainConfig, "precision")
    product("pretrain", family=FAMILIES, objective=choices(PretrainConfig, "objective"), tokenizer=TOKENIZERS,
            precision=precisions)
    product("finetune", family=FAMILIES, task=TASKS, tokenizer=("default", "given"),
            group_by_length=choices(TrainConfig, "group_by_length"))
    product("distill", family=FAMILIES, student=STUDENTS, cache=choices(DistillConfig, "cache"),
            intermediate_epochs=(0.0, 1.0), precision=precisions)
    product("distill-lm", family=FAMILIES, student=("layers=1", "preset"),
            top_k=(0, 8), teacher_precision=choices(LMDistillConfig, "teacher_precision"))
    product("distill-embeddings", family=FAMILIES, student=("layers=1", "preset"))
    product("prune", family=FAMILIES, recovery=("distill", "finetune", "none"))
    product("prune-lm", family=FAMILIES, recovery=choices(PruneLMConfig, "recovery"),
            baseline=choices(PruneLMConfig, "baseline"))
    product("quantize", family=FAMILIES, method=choices(QuantizeConfig, "method"))
    product("export", family=FAMILIES, precision=choices(ExportConfig, "precision"))
    product("evaluate", family=FAMILIES, task=("classification",))
    product("compare", family=FAMILIES, baseline=choices(CompareConfig, "baseline"))
    product("auto", family=FAMILIES, backend=("torch", "onnxruntime"))
    product("predict", family=FAMILIES, output=(".jsonl", ".csv"))
    assert {stage for stage, _ in out} == set(STAGES) - set(NOT_SWEPT), "every CLI stage is swept"
    return out


def ci_sample(combos: list[tuple[str, dict]], size: int, seed: int) -> list[tuple[str, dict]]:
    """A seeded sample stratified by stage: each stage in proportion to its share, and at least 2 of each."""
    rng = random.Random(seed)
    picked = []
    for stage in dict.fromkeys(stage for stage, _ in combos):
        own = [c for c in combos if c[0] == stage]
        picked += rng.sample(own, min(len(own), max(2, round(size * len(own) / len(combos)))))
    return picked


ALL = combinations()
SAMPLED = set(map(id, ci_sample(ALL, CI_SAMPLE, SEED)))


def _id(combo: tuple[str, dict]) -> str:
    stage, axes = combo
    return stage + "-" + "-".join(f"{v}" for v in axes.values())


PARAMS = [pytest.param(c, id=_id(c), marks=() if id(c) in SAMPLED else pytest.mark.slow) for c in ALL]


# ------------------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus, tiny_tokenizer_dir, ner_rows):
    root = tmp_path_factory.mktemp("sweep")
    data = {"classification": root / "cls.csv", "regression": root / "reg.csv", "token-classification": root / "ner.conll",
            "question-answering": Path(__file__).parents[1] / "fixtures" / "squad_mini.json"}
    pd.DataFrame(make_sentiment_rows(48)).to_csv(data["classification"], index=False)
    pd.DataFrame({"text": [r["text"] for r in make_sentiment_rows(48)],
                  "score": [float(i % 5) for i in range(48)]}).to_csv(data["regression"], index=False)
    data["token-classification"].write_text(ner_rows, encoding="utf-8")
    return {"root": root, "data": data, "corpus": corpus, "tokenizer": tiny_tokenizer_dir, "teachers": {}}


@pytest.fixture(scope="module")
def ner_rows() -> str:
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "story", "acting"]
    sentences = []
    for _ in range(40):
        picked = rng.sample(words, 4)
        sentences.append("\n".join(f"{w} {'B-PER' if w == 'good' else 'O'}" for w in picked))
    return "\n\n".join(sentences) + "\n"


def _small_train() -> list[str]:
    return ["--epochs", "1", "--batch-size", "8", "--max-length", "24", "--quiet"]


def teacher_run(inputs, family: str, capsys) -> Path:
    """A fine-tuned tiny classification teacher of `family` (made once per module, through the CLI)."""
    teachers = inputs["teachers"]
    if family not in teachers:
        out = inputs["root"] / f"teacher-{family}"
        code, _, err = run_cli(["finetune", "--model", f"{family}-2l-32h", "--tokenizer", str(inputs["tokenizer"]),
                                "--data", str(inputs["data"]["classification"]), "--out", str(out),
                                *_small_train()], capsys)
        assert code == 0, err
        teachers[family] = out
    return teachers[family]


def lm_teacher(inputs, family: str, capsys) -> Path:
    """A tiny pre-trained teacher of `family` (CLM for GPT-2, MLM otherwise) for distill-lm / distill-embeddings."""
    key = f"lm-{family}"
    teachers = inputs["teachers"]
    if key not in teachers:
        out = inputs["root"] / key
        objective = "clm" if family == "gpt2" else "mlm"
        code, _, err = run_cli(["pretrain", "--model", f"{family}-2l-32h", "--tokenizer", str(inputs["tokenizer"]),
                                "--objective", objective, "--data", str(inputs["corpus"]), "--out", str(out),
                                "--max-steps", "4", "--batch-size", "8", "--max-length", "32", "--quiet",
                                "--cache-dir", str(inputs["root"] / "cache")], capsys)
        assert code == 0, err
        teachers[key] = out
    return teachers[key]


# -------------------------------------------------------------------------------------------------- commands


def command(stage: str, axes: dict, inputs, out: Path, capsys) -> list[str]:
    """The CLI arguments of one combination."""
    family = axes["family"]
    cache = ["--cache-dir", str(inputs["root"] / "cache")]
    if stage == "pretrain":
        tokenizer = {"default": [], "trained": ["--train-tokenizer", "120"],
                     "given": ["--tokenizer", str(inputs["tokenizer"])]}[axes["tokenizer"]]
        return ["pretrain", "--model", f"{family}-2l-32h", *tokenizer, "--objective", axes["objective"], "--data",
                str(inputs["corpus"]), "--out", str(out), "--max-steps", "2", "--batch-size", "8", "--max-length",
                "32", "--precision", axes["precision"], "--quiet", *cache]
    if stage == "finetune":
        tokenizer = ["--tokenizer", str(inputs["tokenizer"])] if axes["tokenizer"] == "given" else []
        flags = ["--group-by-length"] if axes["group_by_length"] else []
        if axes["task"] == "question-answering":  # questions need room for a context window
            flags += ["--max-length", "64", "--doc-stride", "16"]
        return ["finetune", "--model", f"{family}-2l-32h", *tokenizer, "--data", str(inputs["data"][axes["task"]]),
                "--task", axes["task"], "--out", str(out), *_small_train(), *flags]
    if stage == "distill":
        student = f"{family}-1l-16h" if axes["student"] == "preset" else axes["student"]
        flags = ["--cache" if axes["cache"] else "--no-cache", "--precision", axes["precision"]]
        if axes["intermediate_epochs"]:
            flags += ["--intermediate-epochs", "1", "--hidden-weight", "1"]
        return ["distill", "--teacher", str(teacher_run(inputs, family, capsys)), "--student", student, "--out",
                str(out), *flags, *_small_train(), *cache]
    if stage in ("distill-lm", "distill-embeddings"):
        student = f"{family}-1l-16h" if axes["student"] == "preset" else axes["student"]
        flags = (["--top-k", str(axes["top_k"]), "--teacher-precision", axes["teacher_precision"]]
                 if stage == "distill-lm" else [])
        return [stage, "--teacher", str(lm_teacher(inputs, family, capsys)), "--student", student, "--data",
                str(inputs["corpus"]), "--out", str(out), *flags, "--epochs", "1", "--batch-size", "8",
                "--max-length", "32", "--quiet", *cache]
    if stage == "prune-lm":  # MLM teachers are refused in one line; the GPT-2 one is pruned and recovered
        flags = ["--baseline"] if axes["baseline"] else []
        return ["prune-lm", "--model", str(lm_teacher(inputs, family, capsys)), "--ffn", "0.5", "--layers", "1",
                "--recovery", axes["recovery"], "--data", str(inputs["corpus"]), "--out", str(out), *flags,
                "--calibration-examples", "4", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--quiet",
                *cache]
    teacher = str(teacher_run(inputs, family, capsys))
    if stage == "prune":
        return ["prune", "--model", teacher, "--heads", "0.5", "--ffn", "0.5", "--recovery", axes["recovery"],
                "--out", str(out), *_small_train()]
    if stage == "quantize":
        return ["quantize", "--model", teacher, "--method", axes["method"], "--out", str(out), "--quiet"]
    if stage == "export":
        return ["export", "--model", teacher, "--precision", axes["precision"], "--out", str(out), "--quiet"]
    if stage == "evaluate":
        return ["evaluate", "--model", teacher, "--latency-repeats", "1", "--out", str(out), "--quiet"]
    if stage == "predict":
        return ["predict", "--model", teacher, "--data", str(inputs["data"]["classification"]), "--out",
                f"{out}{axes['output']}", "--quiet"]
    if stage == "auto":  # a target every shape meets: the search trains what it shortlists
        return ["auto", "--teacher", teacher, "--min-speedup", "0.01", "--backend", axes["backend"], "--shortlist", "1",
                "--screen-rows", "16", "--epochs", "1", "--time-budget", "10m", "--out", str(out), "--quiet"]
    return ["compare", teacher, teacher, "--baseline", axes["baseline"], "--out", str(out), "--latency-repeats", "1",
            "--quiet"]


def outcome(code: int, err: str) -> str:
    """'ran', or 'refused: <message>' for one clean error line; anything else fails the test."""
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        return "ran"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lmcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "see `lmcompress" not in errors[0], f"the sweep built a command the CLI does not accept: {errors[0]}"
    return "refused: " + errors[0].removeprefix("lmcompress: error: ")


def finished(stage: str, out: Path) -> bool:
    """What a successful run leaves: a complete run directory (a report for compare, metrics for evaluate)."""
    from lmcompress.runs.manifest import is_complete

    if stage == "compare":
        return (out / "report.json").is_file() and (out / "report.md").is_file()
    if stage == "evaluate":
        return (out / "metrics.json").is_file()
    if stage == "auto":
        return (out / "report" / "report.json").is_file() and (out / "best" / "config.json").is_file()
    if stage == "predict":  # one file, every row answered
        written = [p for p in out.parent.glob("out.*")]
        return len(written) == 1 and len(pd.read_json(written[0], lines=True) if written[0].suffix == ".jsonl"
                                         else pd.read_csv(written[0])) == 48
    return is_complete(out)


@pytest.mark.parametrize("combo", PARAMS)
def test_combination_does_what_the_table_expects(combo, inputs, tmp_path, capsys):
    stage, axes = combo
    out = tmp_path / "out"
    code, _, err = run_cli(command(stage, axes, inputs, out, capsys), capsys)
    result, expected = outcome(code, err), expected_outcome(stage, axes)
    log = inputs["root"].parent / "sweep-outcomes.jsonl"  # for the closing note: what ran, what was refused
    with log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"stage": stage, **axes, "outcome": result, "expected": expected}) + "\n")
    if expected == "ran":
        assert result == "ran", f"expected to run, but {result}"
    else:
        words = expected.removeprefix("refused: ")
        assert result.startswith("refused: ") and words in result, f"expected {expected}, got {result}"
    if result == "ran":
        assert finished(stage, out), f"{stage} exited 0 but left no complete output in {out}"
    else:
        assert not out.exists(), f"a refused run left {out} behind"
    assert not list(tmp_path.glob(".out.*")), "a partial or temporary folder was left behind"
