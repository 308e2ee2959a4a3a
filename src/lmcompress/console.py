"""One place that decides how wide tables are (the terminal's width, or 160 columns in logs and pipes) and how a
long pass outside the training loop shows its progress."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")


def console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def tracked(items: Iterable[T], description: str, show: bool = True) -> Iterator[T]:
    """`items`, with a progress bar on stderr when `show` (pass False on all but one process of a launcher) unless
    --quiet raised the lmcompress logger above INFO."""
    show = show and logging.getLogger("lmcompress").isEnabledFor(logging.INFO)
    yield from track(items, description=description, console=console(stderr=True), disable=not show)
