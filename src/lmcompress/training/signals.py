"""Stopping on a signal: SIGTERM (and, under a launcher, SIGINT) end training with a checkpoint."""

from __future__ import annotations

import signal
from typing import Any

from ..distributed import on_all_processes


class Signals:
    """SIGTERM (and, under a launcher, SIGINT) stop training with a checkpoint.

    In one process the signal becomes a KeyboardInterrupt at once: the checkpoint keeps the RNG states of the batch in
    flight, so the resumed run redoes it. Under a launcher the signal reaches the ranks at different instants, one
    maybe inside a gradient all-reduce the others would abandon; so it is only noted, and the ranks agree after each
    optimizer step whether any was signalled, then all stop at that same step (`stop_requested`).
    """

    def __init__(self, launched: bool):
        self.launched, self.requested, self.previous = launched, False, {}

    def __enter__(self) -> Signals:
        names = ("SIGTERM", "SIGINT") if self.launched else ("SIGTERM",)
        for sig in [getattr(signal, name) for name in names if hasattr(signal, name)]:
            try:
                self.previous[sig] = signal.signal(sig, self._note if self.launched else self._raise)
            except ValueError:  # not the main thread
                continue
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True

    def stop_requested(self) -> bool:
        """Under a launcher, whether any rank was signalled (every rank must ask, after the same step)."""
        return self.launched and not on_all_processes(not self.requested)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
