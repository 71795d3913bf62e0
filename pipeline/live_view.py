"""What ``fraud up`` prints while it runs: rates, verdicts, lag, dead letters.

It reads the same snapshot as ``fraud status`` (the servers' own counters), so
it shows what the pipeline did, whichever processes did it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import redis.asyncio as aioredis

from pipeline.keys import VERDICTS, Keys
from pipeline.status import snapshot


def render(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    seconds = max((current["taken_at_ms"] - previous["taken_at_ms"]) / 1000, 1e-3)

    def rate(now: int, before: int) -> str:
        return f"{(now - before) / seconds:,.0f}/s"

    c, p = current["stats"], previous["stats"]
    added, added_before = current["streams"]["raw"]["entries_added"], previous["streams"]["raw"]["entries_added"]
    verdicts = "  ".join(
        f"{v} {c.get('detector.' + v, 0):,} ({rate(c.get('detector.' + v, 0), p.get('detector.' + v, 0))})"
        for v in VERDICTS)
    lag = "  ".join(f"{name} {'~' if g['lag_estimated'] else ''}{g['lag']:,}"
                    for name, g in current["groups"].items()) or "no groups yet"
    return [
        f"clicks in   {added:,} ({rate(added, added_before)})",
        f"verdicts    {verdicts}",
        f"duplicates  {c.get('detector.duplicate', 0):,}   dead letters {current['dead_letters']['count']:,}"
        f"   counted {c.get('aggregator.counted', 0):,}",
        f"lag         {lag}",
    ]


class LiveView:
    """Redraws in place on a terminal; elsewhere prints one line per refresh."""

    def __init__(self, client: aioredis.Redis, keys: Keys, out: TextIO = sys.stdout) -> None:
        self.client = client
        self.keys = keys
        self.out = out
        self.previous: dict[str, Any] | None = None
        self.drawn = 0

    async def refresh(self) -> None:
        current = await snapshot(self.client, self.keys, dead_sample=0)
        if self.previous is not None:
            self._draw(render(self.previous, current))
        self.previous = current

    def _draw(self, lines: list[str]) -> None:
        if self.out.isatty():
            # Move up over the last block and clear each line as it is rewritten.
            prefix = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        else:
            self.out.write(" | ".join(lines) + "\n")
        self.out.flush()
