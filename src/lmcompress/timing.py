"""Latency measured side by side. Every model runs once per round, the order rotated from round to round, so a
noisy neighbour slows the models of a round alike; a speedup is the median over rounds of the ratio within each
round, and each figure comes with its interquartile range. (Timing one model after another let one busy minute
make a model look 3x slower.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `threads` (unchanged when None) for the block, then restored."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def interleaved_rounds(calls: dict[Hashable, Callable[[], object]], rounds: int,
                       warmup: int = 3) -> dict[Hashable, list[float]]:
    """ms of each call in each round (warm-up calls first, not counted)."""
    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key]()
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            calls[key]()
            times[key].append((time.perf_counter() - start) * 1000.0)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); a single value stands for all three."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def per_round_ratios(reference: list[float], other: list[float]) -> list[float]:
    """reference / other round by round: the speedup of `other` as each round saw it."""
    return [r / o for r, o in zip(reference, other) if o > 0]
