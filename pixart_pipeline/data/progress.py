"""Progress lines for long data passes (hashing, probing): what a user watching the run log needs.

A 100,000-image folder takes seconds here but minutes on a network share, and a step that prints
nothing until it ends looks hung. :class:`Progress` logs ``"<what>: <done>/<total> (<rate>/s)"`` each
time another tenth of the work is done (never more often than every ``MIN_STEP`` items, so a demo
folder of 24 images logs nothing extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable

MIN_STEP = 1000


class Progress:
    """Counts finished items and logs every ``max(total / 10, MIN_STEP)`` of them."""

    def __init__(
        self, log: Callable[[str], None], what: str, total: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.log = log
        self.what = what
        self.total = total
        self.done = 0
        self.step = max(-(-total // 10), MIN_STEP)
        self._next = self.step
        self._clock = clock
        self._start = clock()

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more finished items; log when a step boundary is crossed (not at the end:
        the caller's own summary line says that)."""
        self.done += n
        if self.done >= self._next and self.done < self.total:
            elapsed = max(self._clock() - self._start, 1e-9)
            self.log(f"{self.what}: {self.done}/{self.total} ({self.done / elapsed:.0f}/s)")
            self._next = (self.done // self.step + 1) * self.step
