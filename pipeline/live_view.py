"""What ``fraud up`` prints while it runs: rates, verdicts, lag, dead letters.

Rates are differences between two readings of the servers' own counters
(entries added to the raw stream, the stages' stats hash), so they show what
the pipeline did, whichever process did it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import redis.asyncio as aioredis

from pipeline.keys import AGGREGATOR_GROUP, DETECTOR_GROUP, VERDICTS, Keys


@dataclass
class Reading:
    at: float
    raw_added: int
    counters: dict[str, int]
    lag: dict[str, int | None]
    dead: int


async def read_counters(client: aioredis.Redis, keys: Keys) -> Reading:
    raw_added = 0
    if await client.exists(keys.raw):
        raw_added = int((await client.xinfo_stream(keys.raw))["entries-added"])
    counters = {k: int(v) for k, v in (await client.hgetall(keys.stats)).items()}
    lag: dict[str, int | None] = {}
    for stream, group in ((keys.raw, DETECTOR_GROUP), (keys.verdicts, AGGREGATOR_GROUP)):
        groups = await client.xinfo_groups(stream) if await client.exists(stream) else []
        lag[group] = next((g["lag"] for g in groups if g["name"] == group), None)
    return Reading(time.monotonic(), raw_added, counters, lag, int(await client.xlen(keys.dead)))


def render(previous: Reading, current: Reading) -> list[str]:
    seconds = max(current.at - previous.at, 1e-6)

    def rate(now: int, before: int) -> str:
        return f"{(now - before) / seconds:,.0f}/s"

    c, p = current.counters, previous.counters
    verdicts = "  ".join(
        f"{v} {c.get('detector.' + v, 0):,} ({rate(c.get('detector.' + v, 0), p.get('detector.' + v, 0))})"
        for v in VERDICTS)
    lag = "  ".join(f"{group} {'?' if n is None else f'{n:,}'}" for group, n in current.lag.items())
    return [
        f"clicks in   {current.raw_added:,} ({rate(current.raw_added, previous.raw_added)})",
        f"verdicts    {verdicts}",
        f"duplicates  {c.get('detector.duplicate', 0):,}   dead letters {current.dead:,}"
        f"   counted {c.get('aggregator.counted', 0):,}",
        f"lag         {lag}",
    ]


class LiveView:
    """Redraws in place on a terminal; elsewhere prints one block per refresh."""

    def __init__(self, client: aioredis.Redis, keys: Keys, out: TextIO = sys.stdout) -> None:
        self.client = client
        self.keys = keys
        self.out = out
        self.previous: Reading | None = None
        self.drawn = 0

    async def refresh(self) -> None:
        current = await read_counters(self.client, self.keys)
        if self.previous is not None:
            self._draw(render(self.previous, current))
        self.previous = current

    def _draw(self, lines: list[str]) -> None:
        if self.out.isatty():
            # Move up over the last block and clear each line as it is rewritten.
            prefix: Any = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        else:
            self.out.write(" | ".join(lines) + "\n")
        self.out.flush()
