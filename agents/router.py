"""The router stage: ``clicks:raw`` in, each click copied into its device's partition.

Producers keep writing ``XADD clicks:raw`` (any client, any language); the router is the one
member (a lease) that reads the raw stream in order and appends each entry to the input of
partition ``crc32(device_id) % P`` under the same entry id, so its arrival time (the clock of the
event-time policy) and every verdict are those it would get unrouted. An entry over the size
limits is not copied: its dead letter goes to its partition's dead-letter stream instead.

Routing a batch is one ``fraud_route`` call per partition it touches (each in its partition's
slot), then the raw group's offset moves on. A crash in between routes the batch again: each
partition remembers the last raw id it received, and skips what it already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.client.resp import RespClient, all_replies
from pipeline.client.step import Section, Step, counted
from pipeline.core.keys import Keys, PartitionKeys
from pipeline.core.partitions import device_field, partition_of
from pipeline.core.settings import Settings
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.steps import ADVANCE
from schemas.click import FieldLimits, InvalidClick, check_size
from schemas.dead_letter import bounded_copy

# fraud_route in agents/fraud.lua, declared once: it reads every name below by name.
ROUTE = Step("fraud_route", keys=("input", "dead", "stats", "routed"), params=("stage", "last"),
             sections=(Section("entries", ("id", "n")), Section("rejects", ("id", "reason", "n"))))


class Router:
    def __init__(self, settings: Settings) -> None:
        self.partitions = settings.partitions
        self.limits = FieldLimits(settings.max_field_count, settings.max_field_bytes)

    async def setup(self, client: RespClient, keys: Keys, partition: PartitionKeys | None) -> None:
        """Nothing to create: a partition's input stream comes into being with its first entry."""

    def split(self, entries: Sequence[Entry]) -> dict[int, dict[str, list[Any]]]:
        """Each partition's share of a batch: entries to copy, entries too big to copy, and the
        share's highest id. The hot path costs a few C-level calls per entry; only an entry over
        a limit goes through the full size check, for its dead letter's reason."""
        shares: dict[int, dict[str, list[Any]]] = {}
        max_items, max_bytes = 2 * self.limits.max_fields, self.limits.max_bytes
        for entry_id, flat in entries:
            number = partition_of(device_field(flat), self.partitions)
            share = shares.get(number)
            if share is None:
                share = shares[number] = {"entries": [], "rejects": [], "last": entry_id}
            share["last"] = entry_id
            if not flat or len(flat) > max_items or max(map(len, flat)) > max_bytes:
                try:
                    check_size(flat, self.limits)
                except InvalidClick as err:
                    reason, copy = bounded_copy(str(err), flat, self.limits)
                    share["rejects"].append(counted((entry_id, reason), copy))
                    continue
            share["entries"].append([entry_id, len(flat), *flat])
        return shares

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        calls = []
        for number, share in sorted(self.split(entries).items()):
            part = ctx.keys.partition(number)
            calls.append(ROUTE.argv({"input": part.input, "dead": part.dead, "stats": part.stats,
                                     "routed": part.routed}, {"stage": ctx.stage, "last": share.pop("last")}, share))
        all_replies(await ctx.client.pipeline(calls))
        await ctx.client.execute(*ADVANCE.argv(
            {"stream": ctx.stream},
            {"group": ctx.stage, "after": ctx.after, "last": entries[-1][0], "count": len(entries)}))
        return []
