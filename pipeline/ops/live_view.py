"""What ``fraud up`` prints while it runs: rates, verdicts, lag, dead letters, and its agents.

It reads the same snapshot as ``fraud status`` (the servers' own counters), so
it shows what the pipeline did, whichever processes did it. It only watches:
whatever a reading meets (Redis down or loading, a slow server, even a bug of
its own) becomes a line on screen and in the log, never an exception that would
end ``fraud up`` and its agents.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, TextIO

import redis.asyncio as aioredis
import structlog

from pipeline.client.outage import Outage
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.units import duration
from pipeline.core.waiting import wait_or_stop
from pipeline.ops.status import snapshot

log = structlog.get_logger()

# A reading that takes longer is a slow server: shown as unreachable, tried again next refresh.
READ_TIMEOUT_S = 5.0


def render(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    seconds = max((current["taken_at_ms"] - previous["taken_at_ms"]) / 1000, 1e-3)

    def rate(now: int, before: int) -> str:
        return f"{(now - before) / seconds:,.0f}/s"

    c, p = current["stats"], previous["stats"]
    added, added_before = current["streams"]["raw"]["entries_added"], previous["streams"]["raw"]["entries_added"]
    verdicts = "  ".join(
        f"{v} {c.get('detector.' + v, 0):,} ({rate(c.get('detector.' + v, 0), p.get('detector.' + v, 0))})"
        for v in VERDICTS)
    # Each stage's lag summed over its partitions.
    lag = "  ".join(f"{name} {'~' if t['lag_estimated'] else ''}{t['lag']:,}"
                    for name, s in current["stages"].items() for t in [s["totals"]])
    return [
        f"clicks in   {added:,} ({rate(added, added_before)})",
        f"verdicts    {verdicts}",
        f"duplicates  {c.get('detector.duplicate', 0):,}   dead letters {current['dead_letters']['count']:,}"
        f"   counted {c.get('aggregator.counted', 0):,}",
        f"lag         {lag}",
    ]


class LiveView:
    """Redraws in place on a terminal; elsewhere prints one line per refresh.

    ``agents`` describes the supervised processes (one phrase each), shown under the figures.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, agents: Callable[[], list[str]] = list,
                 out: TextIO = sys.stdout) -> None:
        self.client = client
        self.keys = keys
        self.agents = agents
        self.out = out
        self.previous: dict[str, Any] | None = None
        self.figures: list[str] = []
        self.outage = Outage()
        self.drawn = 0

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            await self.refresh()
            await wait_or_stop(stop, interval)

    async def refresh(self) -> None:
        try:
            current = await self.outage.read(self._read())
        except Exception as err:
            # A fault of the view itself: shown and logged whole, and the agents run on.
            log.exception("live view failed to read the pipeline")
            self.figures = [f"live view   failed: {type(err).__name__}: {err}"]
        else:
            self._took(current)
        agents = self.agents()
        lines = [*self.figures, *([f"agents      {'  '.join(agents)}"] if agents else [])]
        if lines:
            self._draw(lines)

    async def _read(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                return await snapshot(self.client, self.keys, dead_sample=0)
        except TimeoutError:
            raise TimeoutError(f"no answer within {READ_TIMEOUT_S:g} s") from None

    def _took(self, current: dict[str, Any] | None) -> None:
        if current is None:
            if self.outage.began:
                log.warning("redis unreachable, the live view retries every refresh", error=self.outage.reason)
            self.figures = [f"redis       {self.outage.describe()}"]
            return
        if self.outage.ended_after_ms is not None:
            log.info("redis reachable again", after=duration(self.outage.ended_after_ms))
        if self.previous is not None:
            self.figures = render(self.previous, current)
        self.previous = current

    def _draw(self, lines: list[str]) -> None:
        if self.out.isatty():
            # Move up over the last block, clear each line as it is rewritten, then clear what is left
            # below (a shorter block, such as the unreachable line, leaves the old lines' tail).
            prefix = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J")
            self.drawn = len(lines)
        else:
            self.out.write(" | ".join(lines) + "\n")
        self.out.flush()
