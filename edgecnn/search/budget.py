"""The search's time budget (``--search-time``) and its heartbeat.

The budget is checked before each unit of work: a uniform precision built and checked, a
latency probe of one layer, one chunk of sensitivity images, one pruning / shift unit, one
candidate built and checked; for the size objective, one layer scored at one width. Past the budget no new unit starts; what is skipped is recorded
and said in the report. Whatever the budget, the search reads its images, exports FP32 and
predicts the search images with it, and times what it built against FP32 (fewer rounds once
the budget is spent): without these there is no answer, not even "keep FP32". The overshoot
is therefore the unit in flight when time runs out (a probe or a chunk: seconds; a uniform
setting or a candidate: its build, recovery and check) plus that final timing.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class Budget:
    """Minutes of search time (None: unlimited) and where the search stands."""

    def __init__(self, minutes: Optional[float], clock: Callable[[], float] = time.monotonic):
        self.seconds = None if minutes is None else float(minutes) * 60
        self.clock = clock
        self.started = clock()
        self._phase = "preparing the search images"
        self.skipped: list[str] = []  # what was not done for lack of time, one line each
        self.spent_in: Optional[str] = None  # the phase during which the time ran out

    @property
    def phase(self) -> str:
        """What the search is doing now (the heartbeat shows it)."""
        return self._phase

    @phase.setter
    def phase(self, text: str) -> None:
        self.spent()  # the time may have run out in the phase that ends here
        self._phase = text

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> Optional[float]:
        return None if self.seconds is None else self.seconds - self.elapsed()

    def spent(self) -> bool:
        """True once the time is used up (never without a budget)."""
        if self.seconds is None or self.elapsed() <= self.seconds:
            return False
        if self.spent_in is None:
            self.spent_in = self._phase
        return True

    def skip(self, what: str) -> None:
        if what not in self.skipped:
            self.skipped.append(what)

    def summary(self) -> dict:
        return {"minutes": None if self.seconds is None else self.seconds / 60, "elapsed_s": round(self.elapsed(), 1),
                "spent_in": self.spent_in, "skipped": list(self.skipped)}


class Heartbeat:
    """A line naming the search's phase whenever nothing was printed for ``every`` seconds, so
    that piped output (a log file, CI) shows the search is alive through long steps."""

    def __init__(self, budget: Budget, emit: Callable[[str], None], every: float = 30.0):
        self.budget, self.emit, self.every = budget, emit, every
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="edgecnn-search-heartbeat", daemon=True)

    def printed(self) -> None:
        """Another line was just printed: the next beat waits a full period."""
        self.last = time.monotonic()

    def line(self) -> str:
        b = self.budget
        left = b.left()
        budget = "" if left is None else (f", {left:.0f} s of the time budget left" if left > 0 else ", time budget spent: finishing")
        return f"search: {b.phase} ({b.elapsed():.0f} s{budget})"

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            if time.monotonic() - self.last >= self.every:
                self.emit(self.line())
                self.printed()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
