"""Progress of a long command on stderr: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24
# A terminal is redrawn often enough to look live; a log gets a line now and then.
TTY_INTERVAL_S = 0.1
LOG_INTERVAL_S = 5.0


class Progress:
    def __init__(self, total: int, unit: str = "lines", out: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.unit = unit
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0 if self.tty else self.started
        self._drawn = False
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._last_draw < (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S):
            return
        self._last_draw = now
        if self.tty:
            self.out.write("\r" + self.line(now) + "\x1b[K")
            self._drawn = True
        else:
            self.out.write(self.line(now) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A message of its own line, which the bar must not overwrite."""
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        eta = f"{(self.total - self.done) / rate:.0f}s" if rate > 0 and self.total >= self.done else "?"
        counts = f"{self.done:,}/{self.total:,} {self.unit} {rate:,.0f}/s ETA {eta}"
        if not self.tty:
            return f"progress: {fraction:.0%} {counts}"
        filled = int(fraction * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} {counts}"
