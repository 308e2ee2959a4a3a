"""The pure parts of `auto`: the shape grid, the speed target, the time budget, and the choice of row."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from transformers import BertConfig, LlamaConfig

from lmcompress.search.shapes import Shape, SpeedTarget, shape_grid, teacher_shape
from lmcompress.search.summary import choose
from lmcompress.config import DataConfig, parse_duration
from lmcompress.models.families import family_of


def test_grid_of_a_narrowable_teacher_spans_depth_heads_and_ffn():
    config = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    family = family_of(config)
    grid = shape_grid(family, config, static=True)
    transformers_ = [s for s in grid if not s.static]
    assert {s.layers for s in transformers_} == {1, 2, 3, 4, 6}
    assert {(s.heads, s.hidden) for s in transformers_} == {(12, 384), (6, 192), (3, 96)}  # head size kept at 32
    assert {s.ffn for s in transformers_} == {1536, 768, 384}
    assert len(transformers_) == 5 * 3 * 3 and grid[-1].static
    assert teacher_shape(family, config) in grid  # its int8 variant is a candidate


def test_grid_of_a_family_that_cannot_be_narrowed_varies_depth_only():
    config = LlamaConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    grid = shape_grid(family_of(config), config, static=False)
    assert [s.layers for s in grid] == [1, 2, 3, 4, 6, 8, 12]
    assert {(s.hidden, s.heads, s.ffn) for s in grid} == {(768, 12, 3072)}


def test_shape_cost_grows_with_every_dimension():
    base = Shape(2, 6, 192, 768)
    assert base.macs_per_token(64) < Shape(3, 6, 192, 768).macs_per_token(64)
    assert base.macs_per_token(64) < Shape(2, 12, 384, 768).macs_per_token(64)
    assert base.macs_per_token(64) < Shape(2, 6, 192, 1536).macs_per_token(64)
    assert base.name == "L2-H192-A6-F768" and Shape(0, 0, 256, 0, static=True).name == "static"


def test_speed_target_by_speedup_or_latency():
    by_speedup, by_latency = SpeedTarget(10.0, None), SpeedTarget(None, 40.0)
    assert by_speedup.required_speedup(500.0) == 10.0 and by_latency.required_speedup(500.0) == 12.5
    assert by_speedup.met(latency_ms=999, speedup=10.0) and not by_speedup.met(latency_ms=1, speedup=9.9)
    assert by_latency.met(latency_ms=40.0, speedup=1) and not by_latency.met(latency_ms=40.1, speedup=99)


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("1h30m", 5400), ("600s", 600), ("30", 1800)])
def test_time_budget_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "45 min", "m45", ""])
def test_time_budget_refuses_other_text(text):
    with pytest.raises(ValueError, match="use minutes"):
        parse_duration(text)


def _row(name, retention, speedup):
    return {"name": name, "retention": retention, "speedup_b32": speedup, "latency_ms_b32": 100 / speedup}


def _search(min_retention=0.97, min_speedup=10.0):
    return SimpleNamespace(cfg=SimpleNamespace(batch_size=32, min_retention=min_retention),
                           target=SpeedTarget(min_speedup, None))


def test_choose_the_fastest_row_that_meets_both_targets_on_validation():
    rows = [_row("teacher", 1.0, 1.0), _row("big", 0.99, 11.0), _row("small", 0.975, 15.0), _row("tiny", 0.99, 40.0)]
    validation = {"big": 0.99, "small": 0.97, "tiny": 0.90}  # tiny keeps 99% on test, but the test rows decide nothing
    assert choose(rows, validation, _search()) == (rows[2], True)


def test_choose_the_best_point_when_no_row_meets_the_target():
    rows = [_row("teacher", 1.0, 1.0), _row("slow-good", 0.99, 5.0), _row("fast-a", 0.95, 12.0),
            _row("fast-b", 0.96, 20.0)]
    validation = {"slow-good": 0.99, "fast-a": 0.96, "fast-b": 0.95}
    assert choose(rows, validation, _search()) == (rows[2], False)  # the most retained among the fast enough
    rows = [_row("teacher", 1.0, 1.0), _row("a", 0.99, 3.0), _row("b", 0.98, 6.0)]
    assert choose(rows, {"a": 0.99, "b": 0.98}, _search()) == (rows[2], False)  # none fast enough: the fastest


def test_shapes_far_below_the_target_by_multiply_adds_are_not_timed():
    import torch
    from transformers import BertForSequenceClassification

    from lmcompress.search.shapes import measure_shapes

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    teacher = BertForSequenceClassification(config).eval()
    family = family_of(config)
    grid = shape_grid(family, config, static=True)
    batch = {"input_ids": torch.randint(1, 50, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    easy, _ = measure_shapes(teacher, family, grid, batch, 50, 1, (), SpeedTarget(1.0, None), rounds=1)
    hard, _ = measure_shapes(teacher, family, grid, batch, 50, 1, (), SpeedTarget(30.0, None), rounds=1)
    assert {m.shape for m in easy} == set(grid)  # every shape is within 3x of the multiply-adds a 1x target needs
    kept = {m.shape for m in hard}
    assert Shape(0, 0, 256, 0, static=True) in kept and Shape(1, 1, 8, 16) in kept
    assert Shape(2, 4, 32, 64) not in kept and len(kept) < len(grid)


def test_each_runtime_int8_variant_is_timed_near_the_target(monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    import torch
    from transformers import BertForSequenceClassification

    from lmcompress.search.shapes import measure_shapes

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    teacher = BertForSequenceClassification(config).eval()
    family = family_of(config)
    grid = [Shape(1, 2, 16, 32), Shape(2, 4, 32, 32)]
    batch = {"input_ids": torch.randint(1, 50, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    # a target no shape reaches in fp32 and int8 given unlimited reach: every shape needs its int8 variants (which
    # shapes are chosen from the timings is test_int8_is_timed_only_for_shapes_short_of_the_target_in_fp32)
    monkeypatch.setattr("lmcompress.search.shapes.INT8_REACH", 1e9)
    monkeypatch.setattr("lmcompress.search.shapes.MACS_REACH", 1e9)
    measured, _ = measure_shapes(teacher, family, grid, batch, 50, 1, ("onnx-int8", "openvino-int8"),
                                 SpeedTarget(1000.0, None), rounds=1)
    assert {m.shape for m in measured if m.variant == "fp32"} == set(grid)
    assert {(shape, v) for shape in grid for v in ("onnx-int8", "openvino-int8")} == {
        (m.shape, m.variant) for m in measured if m.variant != "fp32"}
    assert all(m.latency_ms > 0 and m.speedup > 0 for m in measured)


def test_int8_is_timed_only_for_shapes_short_of_the_target_in_fp32(monkeypatch):
    from lmcompress.search.shapes import Measured, needing_int8

    def fp32(layers, speedup, static=False):
        return Measured(Shape(layers, 1, 8, 16, static=static), "fp32", 1000, 10.0, [9.0, 11.0], speedup,
                        [speedup, speedup])

    measured = [fp32(1, 30.0), fp32(2, 10.5), fp32(3, 8.0), fp32(4, 3.0), fp32(6, 2.0), fp32(0, 90.0, static=True)]
    kept = needing_int8(measured, required=10.0)
    # 30x is fast enough in fp32; 10.5x is inside the 10% margin (under 11x), so int8 may still be needed; 2x is
    # beyond int8's reach (10 / 3.5); the static student has no int8
    assert [m.shape.layers for m in kept] == [2, 3, 4]
    assert needing_int8(measured, required=1.0) == []  # every shape fast enough in fp32
    monkeypatch.setattr("lmcompress.search.shapes.MAX_EXPORTS", 2)
    donor = [Measured(Shape(d, 1, 8, 16, origin="d"), "fp32", 1000, 10.0, [9.0, 11.0], 9.9, [9.9, 9.9]) for d in (1, 2)]
    kept = needing_int8(donor + measured, required=10.0)  # the faster donor shapes do not crowd the cuts out
    assert [(m.shape.origin, m.shape.layers) for m in kept] == [("d", 1), ("d", 2), ("", 2), ("", 3)]


def test_shortlist_takes_fp32_when_fast_enough_else_the_fastest_int8():
    from lmcompress.search.run import shortlist

    def record(name, layers, variant, speedup, origin=""):
        return {"name": name, "layers": layers, "heads": 1, "hidden": 8, "ffn": 16, "static": False,
                "variant": variant, "speedup": speedup, "params": 1000 * layers, "origin": origin}

    records = [record("L2", 2, "fp32", 5.0), record("L2", 2, "onnx-int8", 11.5), record("L2", 2, "openvino-int8", 14.0),
               record("L1", 1, "fp32", 12.0), record("L1", 1, "openvino-int8", 20.0),
               # a donor: its biggest fast-enough shape takes a slot of its own, even at a depth a cut already holds
               record("d-L3", 3, "fp32", 9.0, "d"), record("d-L3", 3, "onnx-int8", 12.0, "d"),
               record("d-L1", 1, "fp32", 30.0, "d"),
               record("gone-L1", 1, "fp32", 30.0, "gone")]  # timed for a donor this search was not given
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    search = SimpleNamespace(target=SpeedTarget(10.0, None), teacher_ms=100.0, family=family_of(config),
                             teacher_shape=teacher_shape(family_of(config), config), cfg=SimpleNamespace(shortlist=4),
                             root=Path("/nowhere"), donors={"d": None})
    chosen = {(c.shape.origin, c.shape.layers, c.variant) for c in shortlist(records, search)}
    assert chosen == {("", 2, "openvino-int8"), ("", 1, "fp32"), ("d", 3, "onnx-int8")}
    search.donors = {}
    assert {c.shape.origin for c in shortlist(records, search)} == {""}


class ScriptedExecutor:
    """A search's executor, scripted: each (candidate, round) scores `outcomes`, every training ran at `pace`
    examples per second; with `fails` every run fails."""

    def __init__(self, outcomes: dict, pace: float = 100.0, fails: bool = False):
        self.outcomes, self.pace, self.fails, self.made_steps = outcomes, pace, fails, []

    def run(self, search, c, steps, rounds):
        self.made_steps.append((c.folder.name, rounds, steps))
        return "loss is NaN" if self.fails else None

    def made(self, search, c, step):
        return False

    def training(self, search, c, step):
        from lmcompress.runs.manifest import TrainingRecord

        return TrainingRecord(examples_per_s=self.pace)

    def round_retention(self, search, c, round_):
        return self.outcomes[(c.folder.name, round_)]


def _search_with(tmp_path, candidates, executor, left_s: float = 3600.0):
    from lmcompress.search.state import Search

    search = Search(cfg=SimpleNamespace(min_retention=0.97, epochs=3.0, batch_size=32), train_rows=1000,
                    root=tmp_path, teacher_dir=tmp_path, data=None,
                    family=None, teacher_config=None, target=SpeedTarget(10.0, None),
                    deadline=time.monotonic() + left_s, candidates=candidates, executor=executor)
    search.teacher_shape = Shape(6, 12, 384, 1536)  # no candidate is the teacher's own shape
    return search


def _trained(tmp_path, name, layers, retention, measured_speedup=None):
    from lmcompress.search.state import Candidate, Status

    c = Candidate(Shape(layers, 2, 16, 32), "fp32", {"speedup": 12.0, "latency_ms": 1.0}, tmp_path / name)
    c.status, c.validation_retention = Status.TRAINED, retention
    if measured_speedup:
        c.measured = {"speedup": measured_speedup, "latency_ms": 100.0 / measured_speedup}
    return c


def test_time_left_goes_to_the_nearest_miss_while_its_rounds_improve(tmp_path):
    from lmcompress.search import run
    from lmcompress.search.state import Status

    near, far = _trained(tmp_path, "near", 2, 0.95), _trained(tmp_path, "far", 1, 0.90)
    # near: round 2 helps, round 3 does not; far then gets its turns until a round reaches the target
    outcomes = {("near", 2): 0.96, ("near", 3): 0.955, ("far", 2): 0.93, ("far", 3): 0.975}
    executor = ScriptedExecutor(outcomes)
    run._extend(_search_with(tmp_path, [far, near], executor))
    assert [(name, r) for name, r, _ in executor.made_steps] == [("near", 2), ("near", 3), ("far", 2), ("far", 3)]
    assert executor.made_steps[0][2] == ["student-r2", "validation-r2"]
    assert (near.best_round, near.validation_retention, near.rounds, near.status) == (2, 0.96, 3, Status.TRAINED)
    assert (far.best_round, far.validation_retention, far.status) == (3, 0.975, Status.MET)
    assert near.deploy == tmp_path / "near" / "student-r2"
    # no time for a round: nothing is made
    fresh, executor = _trained(tmp_path, "near", 2, 0.95), ScriptedExecutor(outcomes)
    run._extend(_search_with(tmp_path, [fresh], executor, left_s=100.0))
    assert executor.made_steps == [] and fresh.rounds == 1 and fresh.status is Status.TRAINED
    # a round that fails closes the candidate, which keeps what it had
    executor = ScriptedExecutor(outcomes, fails=True)
    run._extend(_search_with(tmp_path, [fresh], executor))
    assert [(name, r) for name, r, _ in executor.made_steps] == [("near", 2)]
    assert fresh.status is Status.CLOSED and fresh.reason == "round 2 failed: loss is NaN" and fresh.trained
    assert (fresh.rounds, fresh.best_round, fresh.deploy) == (1, 1, tmp_path / "near" / "student")


def test_rounds_go_only_to_candidates_measured_fast_enough_as_trained(tmp_path):
    from lmcompress.search import run

    # "slow" keeps the retention but is too slow as trained: the target is not met, and its rounds go to "fast"
    slow, fast = _trained(tmp_path, "slow", 2, 0.98, 9.0), _trained(tmp_path, "fast", 2, 0.93, 10.5)
    executor = ScriptedExecutor({("fast", 2): 0.94, ("fast", 3): 0.94})
    search = _search_with(tmp_path, [slow, fast], executor)
    assert not search.fast_as_trained(slow, 1.1) and search.fast_as_trained(fast)
    assert search.fast_as_trained(_trained(tmp_path, "near", 2, 0.9, 9.5), 1.1)  # within the margin: noisy timings
    run._extend(search)
    assert [(name, r) for name, r, _ in executor.made_steps] == [("fast", 2), ("fast", 3)]  # round 3 no better: it ends
    # one that keeps the retention and is slow only within the margin gets no rounds either: they cannot speed it up
    executor = ScriptedExecutor({("short", 2): 0.94, ("short", 3): 0.94})
    run._extend(_search_with(tmp_path, [_trained(tmp_path, "kept", 2, 0.98, 9.5), _trained(tmp_path, "short", 2, 0.93, 10.5)],
                        executor))
    assert [name for name, _, _ in executor.made_steps] == ["short", "short"]


def test_time_estimates_are_functions_of_the_search_and_the_candidate_alone(tmp_path):
    from lmcompress.search.run import QUANTIZE_ESTIMATE_S, STATIC_EPOCHS, STATIC_PACE, estimate_s, round_estimate_s

    search = _search_with(tmp_path, [], ScriptedExecutor({}))
    search.teacher_ms = 64.0
    c = _trained(tmp_path, "c", 2, 0.9)
    c.pace = 200.0
    # 3 epochs over 1000 rows at 200 rows/s with 20% slack, the teacher's pass over them (1000 / 32 batches of
    # 64 ms), then the int8 step
    assert estimate_s(search, c) == pytest.approx(18.0 + 2.0 + QUANTIZE_ESTIMATE_S)
    assert round_estimate_s(search, c) == pytest.approx(18.0 + QUANTIZE_ESTIMATE_S)  # the cache holds the teacher
    c.pace = 100.0
    assert round_estimate_s(search, c) == pytest.approx(36.0 + QUANTIZE_ESTIMATE_S)
    c.pace = None  # never timed: one row a second, the most cautious
    assert round_estimate_s(search, c) == pytest.approx(3600.0 + QUANTIZE_ESTIMATE_S)
    search.teacher_shape = c.shape
    assert estimate_s(search, c) == QUANTIZE_ESTIMATE_S  # the teacher's own int8
    static = _trained(tmp_path, "static", 0, 0.9)
    static.shape = Shape(0, 0, 256, 0, static=True)
    # the static student: the teacher's pass over its 3,200-token vocabulary (3 tokens each: 150 rows of 64 tokens)
    # and over the 1000 training rows, 1150 / 32 batches of 64 ms, then 10 epochs of its head, with 20% slack
    search.teacher_config, search.data = SimpleNamespace(vocab_size=3200), SimpleNamespace(max_length=64)
    assert estimate_s(search, static) == pytest.approx(1.2 * (2.3 + STATIC_EPOCHS * 1000 / STATIC_PACE))
    search.train_rows = 100  # a small task's static student is quicker
    assert estimate_s(search, static) == pytest.approx(1.2 * (0.5 + STATIC_EPOCHS * 100 / STATIC_PACE))


def test_a_candidate_whose_estimate_exceeds_the_time_left_is_closed_untrained(tmp_path, monkeypatch):
    from lmcompress.search import run
    from lmcompress.search.state import Status

    slow, quick = _trained(tmp_path, "slow", 2, None), _trained(tmp_path, "quick", 2, None)
    for c, rows_per_s in ((slow, 2.0), (quick, 1000.0)):  # 1920 s vs 124 s, with 700 s left before the report
        c.status, c.validation_retention, c.pace = Status.SCREENED, None, rows_per_s
    executor = ScriptedExecutor({("quick", 1): 0.98})
    monkeypatch.setattr(run, "_retime", lambda search, c: {"speedup": 12.0, "latency_ms": 8.0})
    search = _search_with(tmp_path, [slow, quick], executor, left_s=run.REPORT_RESERVE_S + 700)
    search.data, search.family = DataConfig(data="reviews.csv"), SimpleNamespace(can_narrow=False)  # for the steps
    search.cfg.screen_rows, search.cfg.learning_rate, search.cfg.augment = 500, 1e-4, None
    run._train(search)
    assert slow.status is Status.CLOSED and slow.reason.startswith("not trained: needs about 32 min")
    assert [name for name, _, _ in executor.made_steps] == ["quick"] and quick.status is Status.MET


def test_equal_sized_shapes_shortlist_the_deeper_first():
    """An ALBERT teacher's cuts share every weight, so their parameter counts tie: the deeper (more accurate) ones
    take the shortlist, not the shallowest."""
    from lmcompress.search.run import shortlist

    records = [{"name": f"L{d}", "layers": d, "heads": 4, "hidden": 32, "ffn": 64, "static": False, "variant": "fp32",
                "speedup": 40.0 / d, "params": 5000} for d in (1, 2, 3, 4)]
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=8, num_attention_heads=4, intermediate_size=64)
    search = SimpleNamespace(target=SpeedTarget(5.0, None), teacher_ms=100.0, family=family_of(config),
                             teacher_shape=teacher_shape(family_of(config), config), cfg=SimpleNamespace(shortlist=2),
                             root=Path("/nowhere"), donors={})
    assert sorted(c.shape.layers for c in shortlist(records, search)) == [3, 4]


def test_augmentation_amount_is_what_fits_in_the_time_given(tmp_path):
    from lmcompress.search.run import QUANTIZE_ESTIMATE_S, augmentation_amount

    search = _search_with(tmp_path, [], ScriptedExecutor({}))  # 3 epochs, 1,000 labelled rows, batch 32
    search.teacher_ms = 320.0  # the teacher labels 100 rows a second
    # two candidates at 36 and 72 rows/s: one row costs 1.2 x 3 / 36 + 1.2 x 3 / 72 = 0.15 s of training and 0.01 s
    # of the teacher's pass, so the labelled rows take 160 s and each augmentation row 0.16 s more
    seconds = 160.0 + 2 * QUANTIZE_ESTIMATE_S + 0.16 * 500
    assert augmentation_amount(10_000, search, [36.0, 72.0], seconds) == pytest.approx(500, abs=1)
    assert augmentation_amount(300, search, [36.0, 72.0], seconds) == 300  # no more than there is
    assert augmentation_amount(10_000, search, [36.0, 72.0], 100.0) == 0  # not even the labelled rows fit
    assert augmentation_amount(10_000, search, [], seconds) == 0  # no transformer student to teach


def test_the_augmentation_amount_is_decided_once_and_passed_to_every_round(tmp_path):
    from lmcompress.search import run
    from lmcompress.search.state import Candidate, Status

    c = Candidate(Shape(2, 2, 16, 32), "fp32", {"speedup": 12.0, "latency_ms": 1.0}, tmp_path / "c")
    c.status, c.pace = Status.SCREENED, 1000.0
    search = _search_with(tmp_path, [c], ScriptedExecutor({}))
    search.data, search.family, search.teacher_ms = DataConfig(data="reviews.csv"), SimpleNamespace(can_narrow=False), 32.0
    search.cfg.screen_rows, search.cfg.learning_rate, search.cfg.augment = 500, 1e-4, "more.txt"
    search.augment_available = 2_000
    run.plan_augmentation(search)
    assert search.augment_rows == 2_000 and search.rows_seen == 3_000  # an hour left: all of it fits
    recorded = json.loads((tmp_path / run.AUGMENT_FILE).read_text())
    assert recorded["rows"] == 2_000 and recorded["available"] == 2_000
    students = [s for s in run._steps(search, c, rounds=2) if s["name"].startswith("student")]
    assert [(s["augment"], s["max_augment_rows"]) for s in students] == [("more.txt", 2_000)] * 2
    assert all("augment" not in s for s in run._steps(search, c) if s["name"] == "screen")
    # a re-run before any student started training plans again (here with no time left: none)
    again = _search_with(tmp_path, [c], ScriptedExecutor({}), left_s=run.REPORT_RESERVE_S + 60)
    again.cfg.augment, again.augment_available = "more.txt", 2_000
    run.plan_augmentation(again)
    assert again.augment_rows == 0 and json.loads((tmp_path / run.AUGMENT_FILE).read_text())["rows"] == 0
    # once a student has started (its partial folder), a re-run keeps the amount it started with: the same steps
    (tmp_path / run.AUGMENT_FILE).write_text(json.dumps(recorded))
    (tmp_path / "c" / ".student.partial").mkdir(parents=True)
    run.plan_augmentation(again)
    assert again.augment_rows == 2_000
    # without --augment nothing is planned or passed on
    search.augment_rows, search.augment_available, search.cfg.augment = 0, 0, None
    (tmp_path / run.AUGMENT_FILE).unlink()
    run.plan_augmentation(search)
    assert search.augment_rows == 0 and not (tmp_path / run.AUGMENT_FILE).exists()
    assert all("augment" not in s for s in run._steps(search, c))
    # without --augment, word spans of the labelled texts: every round is told how many spans per text, and the cap
    search.cfg.augment_spans, search.augment_available, search.augment_source = 4, 2_000, "word spans"
    run.plan_augmentation(search)
    students = [s for s in run._steps(search, c, rounds=2) if s["name"].startswith("student")]
    assert [(s["augment_spans"], s["max_augment_rows"], "augment" in s) for s in students] == [(4, 2_000, False)] * 2
    assert json.loads((tmp_path / run.AUGMENT_FILE).read_text())["source"] == "word spans"


def test_auto_counts_word_spans_without_augment_text_and_only_for_single_text_classification(tmp_path):
    from lmcompress.search import run

    train = pd.DataFrame({"text": ["a long enough review of a film", "too short", "another fine long review here"]})
    held = pd.DataFrame({"text": ["a held out row"]})
    task = SimpleNamespace(task="classification", has_pair=False,
                           splits={"train": train, "validation": held, "test": held})
    search = _search_with(tmp_path, [], ScriptedExecutor({}))
    search.cfg.augment, search.cfg.augment_spans = None, 3
    run._count_augmentation(search, task)
    assert 0 < search.augment_available <= 2 * 3 and "word spans" in search.augment_source  # the short text: none
    for cfg_change, task_change in (({"augment_spans": 0}, {}), ({}, {"has_pair": True}), ({}, {"task": "regression"})):
        search.augment_available = 0
        search.cfg.augment_spans = cfg_change.get("augment_spans", 3)
        run._count_augmentation(search, SimpleNamespace(**(vars(task) | task_change)))
        assert search.augment_available == 0


def test_the_report_says_what_the_students_learnt_from_beside_the_labelled_rows():
    from lmcompress.search.summary import _augmentation_line

    def line(rows=0, available=0, task="classification", pair=None, spans=4):
        return _augmentation_line(SimpleNamespace(
            train_rows=10_246, augment_rows=rows, augment_available=available, task=task, sample=([], pair),
            augment_source="word spans of the labelled texts, up to 4 per text", cfg=SimpleNamespace(augment_spans=spans)))

    assert line(2_000, 38_000).startswith("Rows: the 10,246 labelled rows and 2,000 of the 38,000 word spans of the "
                                          "labelled texts, up to 4 per text, labelled by the teacher")
    assert "none of the 38,000 word spans" in line(0, 38_000) and "larger --time-budget" in line(0, 38_000)
    assert "--augment-spans 0" in line(spans=0) and "--augment-spans 0" in line(task="regression")
    assert "--augment-spans 0" in line(pair=["b"])  # pairs of texts get no spans
    assert "5 words" in line()  # spans asked for, but no text long enough


@pytest.mark.parametrize("static_retention", [0.98, 0.90], ids=["static-meets-the-target", "static-misses-it"])
def test_the_static_student_is_made_before_any_screening_and_ends_the_search_when_it_meets_the_target(
        tmp_path, monkeypatch, static_retention):
    from lmcompress.search import run
    from lmcompress.search.state import Candidate, Status

    static = Candidate(Shape(0, 0, 256, 0, static=True), "fp32", {"speedup": 300.0, "latency_ms": 1.0},
                       tmp_path / "static")
    cut = Candidate(Shape(2, 2, 16, 32), "fp32", {"speedup": 12.0, "latency_ms": 8.0}, tmp_path / "cut")
    executor = ScriptedExecutor({("static", 1): static_retention, ("cut", 1): 0.95})
    monkeypatch.setattr(run, "_retime", lambda search, c: {"speedup": c.predicted["speedup"], "latency_ms": 1.0})
    search = _search_with(tmp_path, [cut, static], executor)
    search.data, search.family = DataConfig(data="reviews.csv"), SimpleNamespace(can_narrow=False)  # for the steps
    search.cfg.screen_rows, search.cfg.learning_rate, search.cfg.augment = 500, 1e-4, None
    search.teacher_validation, search.metric = 0.8, "accuracy"
    search.teacher_config, search.teacher_ms = SimpleNamespace(vocab_size=3200), 64.0  # for the static's estimate
    run._train(search, unscreened_only=True)
    assert executor.made_steps == [("static", 1, ["student", "validation"])]  # the cut waits for its screen
    assert cut.status is Status.PLANNED
    run._screen(search)
    if static_retention >= 0.97:  # nothing slower is worth a screen: the fastest candidate of all met the target
        assert static.status is Status.MET and cut.status is Status.CLOSED
        assert cut.reason == "not screened: a faster candidate already met the target"
        run._train(search)
        assert len(executor.made_steps) == 1  # nothing else made, and the static student not again
    else:
        assert static.status is Status.TRAINED and cut.status is Status.SCREENED
        assert executor.made_steps[1] == ("cut", 1, ["screen"])
        assert search.candidates == [static, cut]  # the trained one stays first in the report's table
        run._train(search)  # the static student is not made again
        assert [name for name, _, _ in executor.made_steps] == ["static", "cut", "cut"]

