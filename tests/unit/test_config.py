import argparse
import json

import pytest

from lmcompress.config import (DataConfig, FinetuneConfig, TrainConfig, add_flags, build_config, flags_to_dict,
                               flat_to_nested, from_dict, to_dict)
from lmcompress.errors import LmcError


def test_unknown_key_lists_valid_keys():
    with pytest.raises(LmcError) as err:
        from_dict(TrainConfig, {"learning_rat": 1e-4})
    message = str(err.value)
    assert "learning_rat" in message and "learning_rate" in message and "batch_size" in message


def test_unknown_nested_key_names_section():
    with pytest.raises(LmcError, match=r"finetune\.data: unknown key\(s\) max_len"):
        from_dict(FinetuneConfig, {"model": "m", "out": "o", "data": {"data": "d", "max_len": 3}}, "finetune")


@pytest.mark.parametrize("raw, fragment", [
    ({"batch_size": "32"}, "expected an integer"),
    ({"batch_size": True}, "expected an integer"),
    ({"learning_rate": "fast"}, "expected a number"),
    ({"precision": "fp8"}, "not one of"),
    ({"keep_best": "yes"}, "true/false"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"epochs": -1}, "epochs must be > 0"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
])
def test_wrong_types_and_ranges(raw, fragment):
    with pytest.raises(LmcError, match=fragment):
        from_dict(TrainConfig, raw)


def test_int_is_accepted_for_float():
    assert from_dict(TrainConfig, {"learning_rate": 1}).learning_rate == 1.0


def test_round_trip_through_dict():
    cfg = FinetuneConfig(model="m", out="o", data=DataConfig(data="d", max_length=64), train=TrainConfig(epochs=2))
    assert from_dict(FinetuneConfig, to_dict(cfg)) == cfg


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: m\nout: o\ndata:\n  data: d\n  max_length: 64\ntrain:\n  epochs: 2\n  batch_size: 8\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_flags(parser, FinetuneConfig)
    args = parser.parse_args(["--config", str(path), "--batch-size", "16", "--no-keep-best"])
    cfg = build_config(FinetuneConfig, args.config, flags_to_dict(args), "finetune")
    assert cfg.train.batch_size == 16 and cfg.train.epochs == 2 and cfg.data.max_length == 64
    assert cfg.train.keep_best is False


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(LmcError, match="not valid YAML"):
        build_config(FinetuneConfig, str(bad), {}, "finetune")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(LmcError, match="must hold a mapping"):
        build_config(FinetuneConfig, str(listy), {}, "finetune")
    with pytest.raises(LmcError, match="does not exist"):
        build_config(FinetuneConfig, str(tmp_path / "missing.yaml"), {}, "finetune")


def test_required_fields():
    with pytest.raises(LmcError, match="model is required"):
        from_dict(FinetuneConfig, {"out": "o", "data": {"data": "d"}})


def test_flat_api_names_map_to_sections():
    nested = flat_to_nested(FinetuneConfig, {"model": "m", "data": "d", "max_length": 64, "epochs": 2, "out": "o"})
    assert nested == {"model": "m", "data": {"data": "d", "max_length": 64}, "train": {"epochs": 2}, "out": "o"}
    cfg = from_dict(FinetuneConfig, nested)
    assert cfg.data.max_length == 64 and cfg.train.epochs == 2.0


def test_partial_section_keeps_the_stage_defaults():
    from lmcompress.config import DistillConfig

    cfg = from_dict(DistillConfig, {"teacher": "t", "student": "layers=2", "out": "o", "train": {"epochs": 2}})
    assert cfg.train.epochs == 2.0 and cfg.train.learning_rate == 1e-4  # distill's default, not finetune's 5e-5
    assert cfg.train.group_by_length and not TrainConfig().group_by_length  # distill groups batches by length


def test_interrupted_run_options_are_compared_key_by_key(tmp_path):
    """Re-running the same command continues an interrupted run; other options are named and refused."""
    from lmcompress.runs.rundir import REQUEST, RunDir, differing_keys

    assert differing_keys({"train": {"epochs": 3, "seed": 1}, "out": "a"},
                          {"train": {"epochs": 5, "seed": 1}, "out": "a"}) == ["train.epochs 3 -> 5"]
    # an option added since the run was recorded matches while it is off, as the older version ran it
    assert differing_keys({"loss": {"alpha": 0.5}}, {"loss": {"alpha": 0.5, "pooled_weight": 0.0}}) == []
    assert differing_keys({"loss": {"alpha": 0.5}}, {"loss": {"alpha": 0.5, "pooled_weight": 1.0}}) == [
        "loss.pooled_weight None -> 1.0"]
    run = RunDir(tmp_path / "run")
    request = {"model": "m", "resume": None, "overwrite": False, "train": {"epochs": 3}}
    assert run.check(False, None, request) is False  # nothing there yet
    run.begin(False, False, request)
    assert json.loads((run.partial / REQUEST).read_text()) == {"model": "m", "train": {"epochs": 3}}
    assert run.check(False, None, request) is False  # no checkpoint yet: nothing to continue, start afresh
    (run.checkpoint).mkdir()
    (run.checkpoint / "state.json").write_text("{}")
    assert run.check(False, None, dict(request, resume=True, overwrite=False)) is True  # resume/overwrite don't count
    with pytest.raises(LmcError, match=r"train\.epochs 3 -> 4"):
        run.check(False, None, dict(request, train={"epochs": 4}))
    with pytest.raises(LmcError, match="pass --resume to continue it"):
        run.check(False, False, request)
    assert run.check(True, None, dict(request, train={"epochs": 4})) is False  # --overwrite starts over
