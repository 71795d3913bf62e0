"""``fraud replay --from-stream``: re-run a range of the raw stream through the current rules, aside.

The range is copied, with the same entry ids (so clicks without ``ts`` keep
the same event time), into the key space ``<namespace>:replay:<name>``,
together with a snapshot of the live blacklist; the detector and the
aggregator then run there in burst mode. Live keys are only read. The
summary compares the replay's outcome per click with the live one.

Clicks at the start of the range see no window of the clicks before it, so a
burst that straddles the start can be judged differently: start the range a
spam window earlier to be sure.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

from agents.pipeline import PIPELINE
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.replies import pairs
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id
from pipeline.runtime.agent import run_burst

PAGE = 1_000
CONSUMER = "replay"
# Outcomes of a click besides its verdict: dead-lettered by the detector, or no
# output at all (a duplicate, or not processed yet, or its verdict trimmed).
DEAD = "dead"
NONE = "none"
OUTCOMES = (*VERDICTS, DEAD, NONE)


def replay_settings(settings: Settings, name: str) -> Settings:
    """The live settings, in the replay's key space, keeping everything until the replay is dropped.

    The agents trim below ``now - stream_keep_ms``: keeping "since 1970" trims nothing.
    """
    replay = Keys(settings.namespace).replay(name)
    return dataclasses.replace(settings, namespace=replay.namespace, stream_keep_ms=int(time.time() * 1000))


async def copy_range(client: RespClient, source: str, target: str, start: str, end: str) -> list[bytes]:
    """XADD every entry of ``source`` in [start, end] to ``target`` with its own id; returns the ids."""
    ids: list[bytes] = []
    low = start
    while True:
        page = await client.execute("XRANGE", source, low, end, "COUNT", PAGE)
        if not page:
            return ids
        replies = await client.pipeline([("XADD", target, entry_id, *fields) for entry_id, fields in page])
        for reply in replies:
            if isinstance(reply, RespError):
                raise FraudError(f"copying to {target} failed: {reply}")
        ids += (entry_id for entry_id, _ in page)
        if len(page) < PAGE:
            return ids
        low = "(" + page[-1][0].decode()


async def copy_blacklist(client: RespClient, source: str, target: str) -> int:
    """Copy a cuckoo filter chunk by chunk; returns the chunks copied (0: no live blacklist yet)."""
    if not await client.execute("EXISTS", source):
        return 0
    chunks = 0
    cursor = 0
    while True:
        cursor, data = await client.execute("CF.SCANDUMP", source, cursor)
        if cursor == 0:
            return chunks
        await client.execute("CF.LOADCHUNK", target, cursor, data)
        chunks += 1


async def outcomes(client: RespClient, keys: Keys, first: bytes, raw_ids: Collection[bytes]) -> dict[bytes, str]:
    """raw id -> what the detector made of it in this key space (a verdict, ``dead`` or ``none``)."""
    found: dict[bytes, str] = {}
    # A verdict or dead letter is written after its click, so its id is not lower.
    low = first.decode()
    for stream, is_dead in ((keys.verdicts, False), (keys.dead, True)):
        async for fields in _scan(client, stream, low):
            named = pairs(fields)
            raw_id = named.get(b"raw_id")
            if raw_id not in raw_ids:
                continue
            if is_dead:
                if named.get(b"stage") == b"detector":
                    found[raw_id] = DEAD
            else:
                found[raw_id] = named[b"verdict"].decode()
    return {raw_id: found.get(raw_id, NONE) for raw_id in raw_ids}


async def _scan(client: RespClient, stream: str, low: str) -> Any:
    while True:
        page = await client.execute("XRANGE", stream, low, "+", "COUNT", PAGE)
        for _, fields in page:
            yield fields
        if len(page) < PAGE:
            return
        low = "(" + page[-1][0].decode()


async def series_sums(client: RespClient, keys: Keys) -> dict[str, int]:
    sums: dict[str, int] = {}
    for verdict in VERDICTS:
        try:
            samples = await client.execute("TS.RANGE", keys.series(verdict), "-", "+")
        except RespError:
            samples = []
        sums[verdict] = int(sum(float(value) for _, value in samples))
    return sums


@dataclasses.dataclass
class ReprocessReport:
    name: str
    keys: Keys
    first: str
    last: str
    copied: int
    blacklist_chunks: int
    live: dict[bytes, str]
    replay: dict[bytes, str]
    series: dict[str, int]

    def changes(self) -> Counter[tuple[str, str]]:
        return Counter((self.live[i], self.replay[i]) for i in self.live if self.live[i] != self.replay[i])

    def text(self) -> str:
        live, replay = Counter(self.live.values()), Counter(self.replay.values())
        blacklist = (f"a snapshot of the live blacklist ({self.blacklist_chunks} chunks)"
                     if self.blacklist_chunks else "no live blacklist (empty)")
        lines = [f"replay {self.name!r}: {self.copied} raw entries {self.first} .. {self.last} "
                 f"copied to {self.keys.raw}, with {blacklist}",
                 f"{'outcome':<14}{'live':>8}{'replay':>8}"]
        lines += [f"{o:<14}{live[o]:>8}{replay[o]:>8}" for o in OUTCOMES]
        changes = self.changes()
        lines.append(f"changed: {sum(changes.values())} of {self.copied}")
        lines += [f"  {a} -> {b}: {n}" for (a, b), n in sorted(changes.items(), key=lambda c: -c[1])]
        lines.append("replay series sums: " + ", ".join(f"{v} {n}" for v, n in self.series.items()))
        lines.append(f"drop it with: fraud replay --drop --name {self.name}")
        return "\n".join(lines)


async def reprocess(settings: Settings, name: str, start: str, end: str) -> ReprocessReport:
    live = Keys(settings.namespace)
    aside = replay_settings(settings, name)
    replay = Keys(aside.namespace)
    client = await open_fast_client(settings)
    try:
        if await client.execute("EXISTS", replay.raw):
            raise FraudError(f"replay {name!r} exists: drop it first (fraud replay --drop --name {name})")
        ids = await copy_range(client, live.raw, replay.raw, start, end)
        if not ids:
            raise FraudError(f"{live.raw} holds no entries from {start} to {end}")
        chunks = await copy_blacklist(client, live.blacklist, replay.blacklist)
        for stage in PIPELINE:
            await run_burst(stage, aside, CONSUMER)
        first, last = ids[0], ids[-1]
        id_set = frozenset(ids)
        return ReprocessReport(
            name, replay, first.decode(), last.decode(), len(ids), chunks,
            await outcomes(client, live, first, id_set), await outcomes(client, replay, first, id_set),
            await series_sums(client, replay))
    finally:
        await client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def drop(settings: Settings, name: str) -> int:
    """Delete every key of a replay's key space; returns how many there were."""
    pattern = _glob_escape(Keys(settings.namespace).replay(name).namespace) + ":*"
    client = await open_fast_client(settings)
    removed = 0
    try:
        cursor = b"0"
        while True:
            cursor, found = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", PAGE)
            if found:
                removed += await client.execute("UNLINK", *found)
            if cursor == b"0":
                return removed
    finally:
        await client.close()


def check_order(start: str, end: str) -> None:
    """An inverted range would silently copy nothing: say so instead."""
    if start != "-" and end != "+" and parse_id(end) < parse_id(start):
        raise FraudError(f"--end {end} is before --start {start}")
