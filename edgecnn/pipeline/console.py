"""What a run shows while it works, and what it keeps in log.txt.

Two sinks: the screen (a terminal gets spinners and bars; a pipe or a file gets plain progress
lines, so that a long ``measure`` still shows it is alive) and the log, which records only the
permanent lines. Live displays never reach the log: a rich console that records while a
spinner runs keeps every frame (hundreds of kB for a twenty-line run).
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

Step = Callable[..., None]  # step(done, total, text="")

PIPED_STEP_SECONDS = 2.0  # a pipe gets at most one progress line per this many seconds (plus the first)


class RunConsole:
    """Screen output plus the log of one run. ``progress=False`` (``--quiet``) hides live progress."""

    def __init__(self, console=None, progress: bool = True):
        from rich.console import Console

        self.screen = console if console is not None else Console(highlight=False)
        self.progress = progress
        self._log = Console(file=io.StringIO(), record=True, width=self.screen.width, highlight=False,
                            color_system=None, force_terminal=False)

    @property
    def live(self) -> bool:
        """True when the screen is a terminal that gets spinners and bars."""
        return self.progress and self.screen.is_terminal

    def print(self, *objects, **kwargs) -> None:
        """A permanent line: on the screen and in the log."""
        self.screen.print(*objects, **kwargs)
        self._log.print(*objects, **kwargs)

    def log_text(self) -> str:
        return self._log.export_text(clear=False)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner on a terminal; a plain start line on a pipe; nothing in the log."""
        if self.live:
            with self.screen.status(text):
                yield
            return
        if self.progress:
            self.screen.print(f"[dim]{text}[/]")
        yield

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Step]:
        """Yields ``step(done, total, text)``: a transient bar on a terminal, progress lines on a pipe."""
        if not self.progress:
            yield lambda *args: None
            return
        if not self.screen.is_terminal:
            yield self._piped_steps(description)
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, console=self.screen, transient=True) as prog:
            task = prog.add_task(description, total=total, info="")

            def step(done: int, total_: int, text: str = "") -> None:
                prog.update(task, completed=done, total=total_, info=text)

            yield step

    def _piped_steps(self, description: str) -> Step:
        started = time.perf_counter()
        last: list[Optional[float]] = [None]

        def step(done: int, total: int, text: str = "") -> None:
            now = time.perf_counter()
            if last[0] is not None and now - last[0] < PIPED_STEP_SECONDS and done < total:
                return
            last[0] = now
            self.screen.print(f"[dim]{description} {done}/{total} {text} ({now - started:.0f} s)[/]".replace("  ", " "))

        return step
