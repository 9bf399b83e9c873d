"""Progress bars with ETA for long loops (rich), printed to stderr; silent when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)
if not _console.is_terminal:  # logs and pipes: wide enough for the summary table
    _console = Console(stderr=True, width=160)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; shows description, bar, count, elapsed and ETA."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def console() -> Console:
    """The stderr console used for progress and summaries."""
    return _console


def stdout_console() -> Console:
    """A console on stdout (results a command exists to print), 160 wide when not a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=160)
