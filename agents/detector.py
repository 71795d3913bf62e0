"""The detector stage: raw clicks in, one verdict per click out.

Python checks each entry and shapes it (sizes first, then fields, then event
time against the entry's arrival); the rules themselves (blacklist, per-device
sliding window, travel and regularity, de-duplication) run server-side in ``fraud_detect``, one atomic
call per batch, together with the verdicts' XADD, the dead letters and the offset's commit,
all in the click's partition (its input, windows, blacklist copy, verdicts and dead letters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.blacklist import ensure_filter
from pipeline.client.resp import RespClient
from pipeline.client.step import Section, Step, counted
from pipeline.core.keys import VERDICTS, Keys, PartitionKeys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.steps import FENCE_KEYS, FENCE_PARAMS
from schemas.click import KNOWN_FIELDS, OPTIONAL_KNOWN_FIELDS, EventTimePolicy, FieldLimits, InvalidClick, check_click
from schemas.dead_letter import bounded_copy

# fraud_detect in agents/fraud.lua, declared once: it reads every name below by name.
DETECT = Step(
    "fraud_detect", keys=(*FENCE_KEYS, "verdicts", "dead", "blacklist", "stats", "window_index", "rejected"),
    params=(*FENCE_PARAMS, "window_prefix", "trail_prefix"),
    config=("verdicts", "window_ms", "spam_threshold", "memory_ms", "history_ms", "index_slack_ms", "expire_limit",
            "robotic_intervals", "robotic_min_intervals", "robotic_spread_permille", "robotic_lookback_ms",
            "travel_max_kmh", "travel_min_km", "travel_lookback_ms", "copied_known"),
    sections=(Section("clicks", ("id", "device", "transaction", "ts", "ip", "lat", "lon", "n")),
              Section("rejects", ("id", "reason", "n"))))


class Detector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.partitions = settings.partitions
        self.limits = FieldLimits(settings.max_field_count, settings.max_field_bytes)
        self.policy = EventTimePolicy(settings.dedup_horizon_ms, settings.max_future_ms)
        # How far before its arrival a click can look back: H (its ts) + W (its window).
        self.memory_ms = settings.dedup_horizon_ms + settings.click_spam_window_ms
        # A click's record carries its known fields once; the step writes device_id, ip and ts into every
        # verdict, the other known ones (`copied_known`) when the verdict copies them, then the record's
        # extras: the click's other fields (None: all of them) or the listed ones (FRAUD_VERDICT_FIELDS).
        listed = settings.verdict_extra_fields
        self.copied = None if listed is None else tuple(n.encode() for n in listed if n not in KNOWN_FIELDS)
        copied_known = OPTIONAL_KNOWN_FIELDS if listed is None else [n for n in OPTIONAL_KNOWN_FIELDS if n in listed]
        # A window's index entry is the next multiple of H above its device's newest ts, so
        # that it is written about once per horizon per device, not per click.
        self.config = DETECT.pack_config({
            # The verdict of a click no rule matches first, then the rules switched on, in the order they apply.
            "verdicts": ",".join((VERDICTS[0], *settings.rule_names)),
            "window_ms": settings.click_spam_window_ms,
            "spam_threshold": settings.click_spam_threshold,
            "memory_ms": self.memory_ms,
            # A device's whole state (window and trail) goes once this far behind every click to come.
            "history_ms": settings.history_ms,
            "robotic_intervals": settings.robotic_intervals,
            "robotic_min_intervals": settings.robotic_min_intervals,
            "robotic_spread_permille": settings.robotic_spread_permille,
            "robotic_lookback_ms": settings.robotic_lookback_ms,
            "travel_max_kmh": settings.travel_max_kmh,
            "travel_min_km": settings.travel_min_km,
            "travel_lookback_ms": settings.travel_lookback_ms,
            "index_slack_ms": settings.dedup_horizon_ms,
            # Each call may remove twice as many quiet windows as a batch can create.
            "expire_limit": 2 * settings.batch_size,
            "copied_known": ",".join(copied_known),
        })

    async def setup(self, client: RespClient, keys: Keys, partition: PartitionKeys | None) -> None:
        assert partition is not None
        await ensure_filter(client.execute, partition, self.settings)

    def records(self, entries: Sequence[Entry], partition: int = 0) -> dict[str, list[list[Any]]]:
        """The sections of ``fraud_detect``: a record per valid click, a record per rejected entry.
        A click in another partition than its device's (a producer writing into partitions with a
        partition function of its own) is rejected: judged here, its device's order would be lost."""
        clicks: list[list[Any]] = []
        rejects: list[list[Any]] = []
        for entry_id, flat in entries:
            try:
                click = check_click(entry_id, flat, self.limits, self.policy, self.copied)
                home = partition_of(click.device_id, self.partitions)
                if home != partition:
                    raise InvalidClick(f"wrong_partition: device_id {click.device_id[:64]!r} belongs to partition "
                                       f"{home} (crc32 % {self.partitions}), not {partition}")
            except InvalidClick as err:
                reason, copy = bounded_copy(str(err), flat, self.limits)
                rejects.append(counted((entry_id, reason), copy))
                continue
            clicks.append(counted((entry_id, click.device_id, click.transaction_id or "", click.ts, click.ip,
                                   click.lat, click.lon), click.extras))
        return {"clicks": clicks, "rejects": rejects}

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        part = ctx.partition
        assert part is not None
        fence_keys, fence_params = ctx.fence(entries)
        reply = await ctx.client.execute(*DETECT.argv(
            {**fence_keys, "verdicts": part.verdicts, "dead": part.dead, "blacklist": part.blacklist,
             "stats": part.stats, "window_index": part.window_index, "rejected": part.rejected},
            {**fence_params, "window_prefix": part.window_prefix, "trail_prefix": part.trail_prefix},
            self.records(entries, part.number), self.config))
        return ctx.outcome(reply)
