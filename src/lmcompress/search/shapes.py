"""The first step of `auto`: which student shapes are fast enough, measured on this machine.

A shape's speed does not depend on its weights, so every shape of a grid (depth x attention width x FFN width, cut
from the teacher's config) is built with random weights and timed beside the teacher, in groups, models interleaved
round by round (timing.py); int8 variants are exported and quantized for the shapes near the target only. What this
measures is the search's *prediction* of a trained candidate's latency; the final report measures the trained model
again, and the two are compared in the search log.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.onnx import OnnxClassifier
from ..backends.openvino import OpenVinoClassifier, onnx_to_ir, quantize_ir_int8
from ..models.families import Family, family_of
from ..models.heads import head_class, saved_head
from ..models.static import StaticClassifier
from ..backends.onnx_io import export_onnx, quantize_dynamic_int8
from ..roofline import macs_per_token
from ..timing import interleaved_rounds, per_round_ratios, quartiles

log = logging.getLogger("lmcompress")

DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
WIDTH_SHARES = (1.0, 0.5, 0.25)  # of the teacher's heads (hidden follows, as `prune --heads`) and of its FFN
STATIC_DIM = 256
GROUP = 8  # random models timed together with the teacher: bounds the memory of a 12-layer grid
INT8_REACH = 3.5  # int8 was at most ~2x fp32 in our measurements: shapes this far below the target are not exported
MAX_EXPORTS = 16
SPEED_MARGIN = 1.1  # a random-weight timing must beat the target by this much: trained models measured up to ~10% off
# the transformer layers' multiply-adds bound a shape's fp32 speedup from above (embeddings and head cost the same in
# every shape) and int8 added at most ~2x: a shape whose MACs ratio is this far below the target is not timed
MACS_REACH = 3.0


@dataclass(frozen=True)
class Shape:
    """A student shape: depth, kept heads per layer, hidden width, FFN neurons per layer; or the static student."""

    layers: int
    heads: int
    hidden: int
    ffn: int
    static: bool = False
    origin: str = ""  # "": cut from the teacher; else the pre-trained donor it is cut from (or is, whole)

    @property
    def name(self) -> str:
        if self.static:
            return "static"
        dims = f"L{self.layers}-H{self.hidden}-A{self.heads}-F{self.ffn}"
        return f"{self.origin}-{dims}" if self.origin else dims

    def macs_per_token(self, seq_len: int) -> float:
        """Multiply-adds per token of the transformer layers (projections, FFN, attention scores and mixing)."""
        return 0.0 if self.static else macs_per_token(self.layers, self.hidden, self.ffn, seq_len)


def teacher_shape(family: Family, config) -> Shape:
    return Shape(family.depth(config), family.heads(config), family.width(config), family.ffn(config))


def shape_grid(family: Family, config, static: bool) -> list[Shape]:
    """Depths up to the teacher's, x head and FFN shares when the family can be narrowed (else full width); the
    teacher's own shape is included (its int8 variant is a candidate). The Llama family keeps its width here: its
    query heads must stay a multiple of the KV heads, which this grid does not model."""
    full = teacher_shape(family, config)
    depths = sorted({d for d in DEPTHS if d <= full.layers} | {full.layers})
    shares = WIDTH_SHARES if family.can_narrow and not family.kv_heads_key else (1.0,)
    head_size = full.hidden // full.heads
    shapes = []
    for layers in depths:
        for head_share in shares:
            heads = max(1, round(full.heads * head_share))
            for ffn_share in shares:
                shapes.append(Shape(layers, heads, heads * head_size, max(1, round(full.ffn * ffn_share))))
    unique = list(dict.fromkeys(shapes))
    return unique + ([Shape(0, 0, STATIC_DIM, 0, static=True)] if static else [])


def donor_grid(origin: str, config) -> list[Shape]:
    """A pre-trained donor whole, and cut to every grid depth below its own (full width: it is already small)."""
    family = family_of(config)
    full = Shape(family.depth(config), family.heads(config), family.width(config), family.ffn(config), origin=origin)
    return [Shape(d, full.heads, full.hidden, full.ffn, origin=origin) for d in DEPTHS if d < full.layers] + [full]


def random_model(teacher: torch.nn.Module, family: Family, shape: Shape, vocab: int, unk_id: int | None,
                 donors: dict[str, Any] | None = None):
    """A model of `shape` with random weights (enough to time it): the teacher's class and head, or a donor's
    architecture (`donors`: origin -> its config) with the teacher's head."""
    if shape.static:
        num_labels = teacher.config.num_labels
        return StaticClassifier(torch.randn(vocab, shape.hidden), num_labels, unk_id, {}, {}, "").eval()
    keep = list(range(shape.layers))
    if shape.origin:
        source = donors[shape.origin]
        config = family_of(source).reshaped(source, keep)
        config.num_labels = teacher.config.num_labels
        return head_class(saved_head(teacher.config)).from_config(config).eval()
    config = family.reshaped(teacher.config, keep, shape.hidden, shape.heads, shape.ffn)
    return type(teacher)(config).eval()


def batch_for(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timing batch as `model` takes it: a donor's vocabulary may be smaller than the teacher's tokenizer (which
    ids it reads does not change its speed; a RoBERTa donor has one token type) and its forward may take no token
    types."""
    config = getattr(model, "config", None)
    if config is None:  # the static student reads any ids
        return batch
    accepted = inspect.signature(model.forward).parameters
    limits = {"input_ids": config.vocab_size - 1, "token_type_ids": getattr(config, "type_vocab_size", 1) - 1}
    return {k: v.clamp(max=limits[k]) if k in limits else v for k, v in batch.items() if k in accepted}


def speedups(times: dict[Any, list[float]], reference: Any) -> dict[Any, dict[str, Any]]:
    """Per timed key: median ms, its interquartile range, and the median within-round speedup over `reference`."""
    out = {}
    for key, rounds in times.items():
        q1, median, q3 = quartiles(rounds)
        ratios = per_round_ratios(times[reference], rounds)
        r1, ratio, r3 = quartiles(ratios)
        out[key] = {"latency_ms": round(median, 3), "latency_iqr_ms": [round(q1, 3), round(q3, 3)],
                    "speedup": round(ratio, 3), "speedup_iqr": [round(r1, 3), round(r3, 3)]}
    return out


def time_in_groups(teacher_call: Callable[[], object], makers: dict[str, Callable[[], Callable[[], object]]],
                   rounds: int) -> tuple[dict[str, dict[str, Any]], float]:
    """Each group of GROUP models is built (`makers` return a call), timed with the teacher in its rounds, so every
    speedup is taken within a round, and freed before the next -> (figures per name, the teacher's median ms)."""
    results: dict[str, dict[str, Any]] = {}
    teacher_ms: list[float] = []
    names = list(makers)
    for start in range(0, len(names), GROUP):
        group = {name: makers[name]() for name in names[start:start + GROUP]} | {"__teacher__": teacher_call}
        times = interleaved_rounds(group, rounds)
        teacher_ms += times["__teacher__"]
        results.update({k: v for k, v in speedups(times, "__teacher__").items() if k != "__teacher__"})
        del group
    return results, statistics.median(teacher_ms)


@dataclass(frozen=True)
class SpeedTarget:
    """--min-speedup S (over the teacher in PyTorch fp32) or --max-latency-ms X, at the search's batch size."""

    min_speedup: float | None
    max_latency_ms: float | None

    def required_speedup(self, teacher_ms: float) -> float:
        return self.min_speedup if self.min_speedup is not None else teacher_ms / self.max_latency_ms

    def met(self, latency_ms: float, speedup: float) -> bool:
        if self.min_speedup is not None:
            return speedup >= self.min_speedup
        return latency_ms <= self.max_latency_ms

    def describe(self) -> str:
        return f">= {self.min_speedup:g}x" if self.min_speedup is not None else f"<= {self.max_latency_ms:g} ms"


@dataclass
class Measured:
    shape: Shape
    variant: str  # fp32 (PyTorch), onnx-int8 (ONNX Runtime), openvino-int8 (OpenVINO)
    params: int
    latency_ms: float
    latency_iqr_ms: list[float]
    speedup: float
    speedup_iqr: list[float]

    def record(self) -> dict[str, Any]:
        return {"name": self.shape.name, **asdict(self.shape), "variant": self.variant, "params": self.params,
                "latency_ms": self.latency_ms, "latency_iqr_ms": self.latency_iqr_ms, "speedup": self.speedup,
                "speedup_iqr": self.speedup_iqr}


def needing_int8(measured: list[Measured], required: float) -> list[Measured]:
    """The fp32 shapes worth an int8 export: short of `required` with SPEED_MARGIN (one fast enough in fp32 is served
    in fp32; its int8 would only cost accuracy) but within INT8_REACH of it, the fastest first: at most MAX_EXPORTS of
    the teacher's cuts, and at most MAX_EXPORTS of each donor's (a donor's shapes must not crowd the cuts out)."""
    near = [m for m in measured if m.variant == "fp32" and not m.shape.static
            and required / INT8_REACH <= m.speedup < required * SPEED_MARGIN]
    chosen = []
    for origin in dict.fromkeys(m.shape.origin for m in near):
        chosen += sorted((m for m in near if m.shape.origin == origin), key=lambda m: -m.speedup)[:MAX_EXPORTS]
    return chosen


def measure_shapes(teacher, family: Family, shapes: list[Shape], batch: dict[str, torch.Tensor], vocab: int,
                   unk_id: int | None, int8_variants: tuple[str, ...], target: SpeedTarget,
                   rounds: int = 5, donors: dict[str, Any] | None = None) -> tuple[list[Measured], float]:
    """fp32 latency of every shape, then each of `int8_variants` for the shapes `needing_int8` -> (figures, teacher
    ms). `donors`: origin -> config of the donors whose shapes are in `shapes`."""
    teacher_call = lambda: teacher(**batch)  # noqa: E731
    seq_len = batch["input_ids"].shape[1]
    full = max(shapes, key=lambda s: s.macs_per_token(seq_len))
    required = target.required_speedup(statistics.median(interleaved_rounds({"t": teacher_call}, 3)["t"]))
    shapes = [s for s in shapes if s.static or full.macs_per_token(seq_len) >= required / MACS_REACH *
              s.macs_per_token(seq_len)]
    by_name = {s.name: s for s in shapes}
    params: dict[str, int] = {}

    def fp32(shape: Shape) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            model = random_model(teacher, family, shape, vocab, unk_id, donors)
            params[shape.name] = sum(p.numel() for p in model.parameters())
            inputs = batch_for(model, batch)
            return lambda: model(**inputs)
        return make

    log.info("timing %d shapes with random weights beside the teacher (%d rounds, batch %d x %d tokens; shapes with "
             "under 1/%g of the multiply-adds the target needs left out)", len(shapes), rounds,
             batch["input_ids"].shape[0], seq_len, MACS_REACH)
    timed, teacher_ms = time_in_groups(teacher_call, {s.name: fp32(s) for s in shapes}, rounds)
    measured = [Measured(by_name[n], "fp32", params[n], **timed[n]) for n in by_name]
    chosen = needing_int8(measured, target.required_speedup(teacher_ms))
    for variant in int8_variants if chosen else ():
        log.info("%s variants of %d shapes near the target", variant, len(chosen))
        with tempfile.TemporaryDirectory(prefix="lmcompress-shapes-") as tmp:
            def int8(shape: Shape, variant: str = variant, tmp: str = tmp) -> Callable[[], Callable[[], object]]:
                def make() -> Callable[[], object]:
                    fp32_model = random_model(teacher, family, shape, vocab, unk_id, donors)
                    inputs = batch_for(fp32_model, batch)
                    model = _int8(fp32_model, variant, inputs, Path(tmp) / shape.name)
                    return lambda: model(**inputs)
                return make

            timed, _ = time_in_groups(teacher_call, {m.shape.name: int8(m.shape) for m in chosen}, rounds)
        measured += [Measured(by_name[n], variant, params[n], **timed[n]) for n in timed]
    return measured, teacher_ms


def _int8(model, variant: str, batch: dict[str, torch.Tensor], stem: Path):
    """The shape's int8 variant as it would be served: ONNX Runtime dynamic, or OpenVINO int8 (NNCF, calibrated
    on the timing batch: a random-weight model's ranges matter only for speed)."""
    graph = export_onnx(model, batch, stem.with_suffix(".onnx"))
    if variant == "openvino-int8":
        xml = quantize_ir_int8(onnx_to_ir(graph, stem.with_suffix(".xml")), stem.with_name(stem.name + "-int8.xml"),
                               [batch])
        return OpenVinoClassifier(xml, torch.get_num_threads())
    return OnnxClassifier(quantize_dynamic_int8(graph, stem.with_name(stem.name + "-int8.onnx")),
                          torch.get_num_threads())
