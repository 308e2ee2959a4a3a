"""Dynamic batching: concurrent requests share model calls, each gets its own answers back, in order."""

from __future__ import annotations

import asyncio

import pytest

from lmcompress.serving.batching import DynamicBatcher


def run(coroutine):
    return asyncio.run(coroutine)


def echo_batcher(calls: list[list[str]], max_batch: int, max_wait_ms: float) -> DynamicBatcher:
    def predict(texts, pairs):
        calls.append(list(texts))
        return [f"{t}!" if pairs is None else f"{t}+{p}" for t, p in zip(texts, pairs or texts)]

    return DynamicBatcher(predict, max_batch, max_wait_ms)


def test_requests_arriving_together_share_one_call_and_get_their_own_answers():
    calls: list[list[str]] = []

    async def scenario():
        batcher = echo_batcher(calls, max_batch=8, max_wait_ms=200)
        await batcher.start()
        answers = await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c"]), batcher.submit(["d", "e"]))
        await batcher.stop()
        return answers

    assert run(scenario()) == [["a!", "b!"], ["c!"], ["d!", "e!"]]
    assert calls == [["a", "b", "c", "d", "e"]]


def test_a_full_batch_runs_without_waiting_and_the_rest_follows():
    calls: list[list[str]] = []

    async def scenario():
        batcher = echo_batcher(calls, max_batch=3, max_wait_ms=10_000)  # a full batch must not wait 10 s
        await batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await asyncio.gather(*[batcher.submit([t]) for t in "abc"])
        elapsed = loop.time() - started
        await batcher.stop()
        return first, elapsed

    first, elapsed = run(scenario())
    assert first == [["a!"], ["b!"], ["c!"]] and calls == [["a", "b", "c"]]
    assert elapsed < 5


def test_pairs_travel_with_their_texts_and_a_failure_reaches_every_request_of_its_batch():
    calls: list[list[str]] = []

    async def pairs():
        batcher = echo_batcher(calls, max_batch=4, max_wait_ms=100)
        await batcher.start()
        answers = await asyncio.gather(batcher.submit(["q1"], ["c1"]), batcher.submit(["q2", "q3"], ["c2", "c3"]))
        await batcher.stop()
        return answers

    assert run(pairs()) == [["q1+c1"], ["q2+c2", "q3+c3"]]

    def broken(texts, pairs):
        raise RuntimeError("runtime failed")

    async def failing():
        batcher = DynamicBatcher(broken, 4, 100)
        await batcher.start()
        results = await asyncio.gather(batcher.submit(["x"]), batcher.submit(["y"]), return_exceptions=True)
        await batcher.stop()
        return results

    results = run(failing())
    assert [str(r) for r in results] == ["runtime failed", "runtime failed"]


def test_stop_answers_what_is_queued():
    calls: list[list[str]] = []

    async def scenario():
        batcher = echo_batcher(calls, max_batch=2, max_wait_ms=50)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit([t])) for t in "abcde"]
        await asyncio.sleep(0)  # every request is queued before stop is asked
        await batcher.stop()
        return [task.result() for task in pending]

    assert run(scenario()) == [["a!"], ["b!"], ["c!"], ["d!"], ["e!"]]
    assert sum(len(c) for c in calls) == 5 and max(len(c) for c in calls) <= 2
    with pytest.raises(ValueError):
        DynamicBatcher(lambda t, p: t, 0, 5)
