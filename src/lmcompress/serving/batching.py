"""Dynamic batching: texts from concurrent requests are run together, as OpenVINO Model Server and Triton do.

A request's texts wait in one queue; the worker takes the first waiting request, then keeps taking requests until
it holds `max_batch` texts or `max_wait_ms` have passed since it took the first, and runs them as one call of the
predictor on a single inference thread (off the event loop, so the server keeps accepting and answering while a
batch runs). One batch at a time: the runtime already spreads a batch over every core it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class _Request:
    texts: list[str]
    pairs: list[str] | None
    answer: asyncio.Future


class DynamicBatcher:
    """`await batcher.submit(texts, pairs)` -> the predictor's answers for those texts, computed in a batch shared
    with whatever other requests arrived within `max_wait_ms`."""

    def __init__(self, predict: Callable[[list[str], list[str] | None], list[Any]], max_batch: int,
                 max_wait_ms: float, on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch  # (texts in the batch, seconds it took): for the server's metrics
        self.queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmcompress-inference")
        self.worker: asyncio.Task | None = None

    async def start(self) -> None:
        self.worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Answer every request already queued, then stop the worker and its thread."""
        if self.worker is not None:
            await self.queue.put(None)
            await self.worker
        self.executor.shutdown(wait=True)

    async def run_alone(self, call: Callable[[], Any]) -> Any:
        """Run `call` on the inference thread, between batches (generation: one prompt at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def submit(self, texts: list[str], pairs: list[str] | None = None) -> list[Any]:
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(texts, pairs, answer))
        return await answer

    async def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """Requests for one batch, starting with `first` -> (requests, whether stop was asked meanwhile)."""
        batch, count = [first], len(first.texts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while count < self.max_batch:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if request is None:
                return batch, True
            batch.append(request)
            count += len(request.texts)
        return batch, False

    async def _work(self) -> None:
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            batch, stopping = await self._gather(first)
            await self._run(batch)
        while not self.queue.empty():  # stop() was asked while a batch was gathered: answer what is left
            request = self.queue.get_nowait()
            if request is not None:
                await self._run([request])

    async def _run(self, batch: list[_Request]) -> None:
        texts = [t for request in batch for t in request.texts]
        pairs = None if batch[0].pairs is None else [p for request in batch for p in request.pairs or []]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answers = await loop.run_in_executor(self.executor, self.predict, texts, pairs)
        except Exception as exc:
            if len(batch) > 1:  # one request's bad input must not fail the others: each runs again alone
                for request in batch:
                    await self._run([request])
            elif not batch[0].answer.done():
                batch[0].answer.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(texts), loop.time() - started)
        start = 0
        for request in batch:
            part = answers[start:start + len(request.texts)]
            start += len(request.texts)
            with contextlib.suppress(asyncio.InvalidStateError):  # the client went away: nobody to answer
                request.answer.set_result(part)
