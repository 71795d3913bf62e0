"""``fraud replay --from-stream``: re-run a range of clicks through the current rules, aside.

The clicks of the range are those of ``clicks:raw`` and those producers wrote straight into the
partitions' inputs (a routed click is in both, under one id: it is taken once). They are copied,
with the same entry ids (so clicks without ``ts`` keep the same event time), into the key space
``<namespace>:replay:<name>``: the raw range to its ``clicks:raw`` as a record, and every click
into its partition's input there, in id order (routed as the router does, which the replay's
router group is then set past). A snapshot of the live blacklist's copies goes along; the
detector and the aggregator then run there in burst mode. Live keys are only read. The summary
compares the replay's outcome per click with the live one.

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

from agents.pipeline import DETECTOR, PIPELINE, ROUTER
from pipeline.client.cluster import every_master
from pipeline.client.connection import open_fast_client
from pipeline.client.partitioning import agree_partitions
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.partitions import device_field, partition_of
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
# Dead letters that are a click's outcome: too big to route, or refused by the detector.
JUDGING_STAGES = (ROUTER.name.encode(), DETECTOR.name.encode())


def replay_settings(settings: Settings, name: str) -> Settings:
    """The live settings, in the replay's key space, keeping everything until the replay is dropped.

    The agents trim below ``now - stream_keep_ms``: keeping "since 1970" trims nothing.
    """
    replay = Keys(settings.namespace).replay(name)
    return dataclasses.replace(settings, namespace=replay.namespace, stream_keep_ms=int(time.time() * 1000))


Entries = list[tuple[bytes, list[bytes]]]
# A click of the range: its partition and its entry id (ids are unique within a partition only).
ClickRef = tuple[int, bytes]


async def read_range(client: RespClient, source: str, start: str, end: str) -> Entries:
    """Every entry of ``source`` in [start, end], in id order."""
    out: Entries = []
    low = start
    while True:
        page = await client.execute("XRANGE", source, low, end, "COUNT", PAGE)
        out += ((entry_id, list(fields)) for entry_id, fields in page)
        if len(page) < PAGE:
            return out
        low = "(" + page[-1][0].decode()


async def write_entries(client: RespClient, target: str, entries: Entries) -> None:
    """XADD each entry to ``target`` under its own id (ascending), in pages."""
    for first in range(0, len(entries), PAGE):
        page = entries[first:first + PAGE]
        for reply in await client.pipeline([("XADD", target, entry_id, *fields) for entry_id, fields in page]):
            if isinstance(reply, RespError):
                raise FraudError(f"copying to {target} failed: {reply}")


async def range_by_partition(client: RespClient, live: Keys, partitions: int, raw: Entries,
                             start: str, end: str) -> dict[int, Entries]:
    """The range's clicks of each partition: the raw ones (by device, as routed) and the ones written
    into the partition's input directly; a routed copy is the raw entry again, under its id."""
    shares: dict[int, dict[bytes, list[bytes]]] = {p: {} for p in range(partitions)}
    for entry_id, fields in raw:
        shares[partition_of(device_field(fields), partitions)][entry_id] = fields
    for number in range(partitions):
        for entry_id, fields in await read_range(client, live.partition(number).input, start, end):
            shares[number].setdefault(entry_id, fields)
    # By id as numbers: as bytes, "5-10" sorts before "5-9".
    return {p: sorted(share.items(), key=lambda entry: parse_id(entry[0])) for p, share in shares.items() if share}


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


async def copy_blacklists(client: RespClient, live: Keys, replay: Keys, partitions: int) -> int:
    """Snapshot every partition's blacklist copy (filter and its member set) and the list of record
    into the replay's key space; returns the filter chunks copied (0: no live blacklist yet)."""
    chunks = 0
    for number in range(partitions):
        source, target = live.partition(number), replay.partition(number)
        chunks += await copy_blacklist(client, source.blacklist, target.blacklist)
        await client.execute("COPY", source.blacklist_members, target.blacklist_members)
    await copy_set(client, live.blacklist_members, replay.blacklist_members)
    return chunks


async def copy_set(client: RespClient, source: str, target: str) -> None:
    """Add a set's members to another set a page at a time: the list of record and its replay copy
    carry no partition's tag, so on a cluster they lie in different slots, where COPY is refused."""
    cursor = b"0"
    while True:
        cursor, members = await client.execute("SSCAN", source, cursor, "COUNT", PAGE)
        if members:
            await client.execute("SADD", target, *members)
        if cursor == b"0":
            return


async def outcomes(client: RespClient, keys: Keys, first: bytes, clicks: Collection[ClickRef]) -> dict[ClickRef, str]:
    """click -> what the pipeline made of it in this key space (a verdict, ``dead`` or ``none``)."""
    found: dict[ClickRef, str] = {}
    # A verdict or dead letter is written after its click, so its id is not lower.
    low = first.decode()
    for number in sorted({p for p, _ in clicks}):
        part = keys.partition(number)
        for stream, is_dead in ((part.verdicts, False), (part.dead, True)):
            async for fields in _scan(client, stream, low):
                named = pairs(fields)
                click = (number, named.get(b"raw_id", b""))
                if click not in clicks:
                    continue
                if is_dead:
                    if named.get(b"stage") in JUDGING_STAGES:
                        found[click] = DEAD
                else:
                    found[click] = named[b"verdict"].decode()
    return {click: found.get(click, NONE) for click in clicks}


async def _scan(client: RespClient, stream: str, low: str) -> Any:
    while True:
        page = await client.execute("XRANGE", stream, low, "+", "COUNT", PAGE)
        for _, fields in page:
            yield fields
        if len(page) < PAGE:
            return
        low = "(" + page[-1][0].decode()


async def series_sums(client: RespClient, keys: Keys, partitions: int) -> dict[str, int]:
    """Every sample of each verdict's series, summed over the partitions."""
    sums: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    for part in keys.partitions(partitions):
        for verdict in VERDICTS:
            try:
                samples = await client.execute("TS.RANGE", part.series(verdict), "-", "+")
            except RespError:
                samples = []
            sums[verdict] += int(sum(float(value) for _, value in samples))
    return sums


@dataclasses.dataclass
class ReprocessReport:
    name: str
    keys: Keys
    first: str
    last: str
    copied: int
    blacklist_chunks: int
    live: dict[ClickRef, str]
    replay: dict[ClickRef, str]
    series: dict[str, int]

    def changes(self) -> Counter[tuple[str, str]]:
        return Counter((self.live[i], self.replay[i]) for i in self.live if self.live[i] != self.replay[i])

    def text(self) -> str:
        live, replay = Counter(self.live.values()), Counter(self.replay.values())
        blacklist = (f"a snapshot of the live blacklist ({self.blacklist_chunks} chunks)"
                     if self.blacklist_chunks else "no live blacklist (empty)")
        lines = [f"replay {self.name!r}: {self.copied} clicks {self.first} .. {self.last} "
                 f"copied to {self.keys.namespace}, with {blacklist}",
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
    partitions = settings.partitions
    try:
        # One key a command: on a cluster the two keys lie in different slots.
        if any(await client.pipeline([("EXISTS", replay.config), ("EXISTS", replay.raw)])):
            raise FraudError(f"replay {name!r} exists: drop it first (fraud replay --drop --name {name})")
        # The replay splits devices as the live pipeline does.
        await agree_partitions(client.execute, live, partitions, record=False)
        await agree_partitions(client.execute, replay, partitions)
        raw = await read_range(client, live.raw, start, end)
        shares = await range_by_partition(client, live, partitions, raw, start, end)
        clicks = frozenset((p, entry_id) for p, share in shares.items() for entry_id, _ in share)
        if not clicks:
            raise FraudError(f"{live.raw} (nor any partition's input) holds no entries from {start} to {end}")
        await write_entries(client, replay.raw, raw)
        for number, share in shares.items():
            await write_entries(client, replay.partition(number).input, share)
        # Its clicks are in the partitions already: the replay's router has nothing left to route.
        await client.execute("XGROUP", "CREATE", replay.raw, ROUTER.name, "$", "MKSTREAM", "ENTRIESREAD", len(raw))
        chunks = await copy_blacklists(client, live, replay, partitions)
        for stage in PIPELINE:
            await run_burst(stage, aside, CONSUMER)
        ids = sorted(entry_id for _, entry_id in clicks)
        first, last = ids[0], ids[-1]
        return ReprocessReport(
            name, replay, first.decode(), last.decode(), len(clicks), chunks,
            await outcomes(client, live, first, clicks), await outcomes(client, replay, first, clicks),
            await series_sums(client, replay, partitions))
    finally:
        await client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def drop(settings: Settings, name: str) -> int:
    """Delete every key of a replay's key space; returns how many there were."""
    pattern = _glob_escape(Keys(settings.namespace).replay(name).namespace) + ":*"
    client = await open_fast_client(settings)
    try:
        # SCAN sees one node's keys: on a cluster, each master's in turn.
        return sum([await _drop_on(node, pattern) for node in every_master(client)])
    finally:
        await client.close()


async def _drop_on(node: RespClient, pattern: str) -> int:
    """Delete one node's keys matching ``pattern``, one key a command (a node's keys span many slots)."""
    removed = 0
    cursor = b"0"
    while True:
        cursor, found = await node.execute("SCAN", cursor, "MATCH", pattern, "COUNT", PAGE)
        if found:
            removed += sum(await node.pipeline([("UNLINK", key) for key in found]))
        if cursor == b"0":
            return removed


def check_order(start: str, end: str) -> None:
    """An inverted range would silently copy nothing: say so instead."""
    if start != "-" and end != "+" and parse_id(end) < parse_id(start):
        raise FraudError(f"--end {end} is before --start {start}")
