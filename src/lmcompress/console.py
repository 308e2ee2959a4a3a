"""One place that decides how wide tables are: the terminal's width, or 160 columns in logs and pipes."""

from rich.console import Console


def console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)
