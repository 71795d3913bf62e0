"""The detector stage: raw clicks in, one verdict per click out.

Python checks each entry and shapes it (sizes first, then fields, then event
time against the entry's arrival); the rules themselves (blacklist, per-device
sliding window, de-duplication) run server-side in ``fraud_detect``, one atomic
call per batch, together with the verdicts' XADD, the dead letters and the XACK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.blacklist import ensure_filter
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import batch_bounds
from pipeline.runtime.agent import fenced_ids
from pipeline.runtime.stage import BatchContext, Entry
from schemas.click import EventTimePolicy, FieldLimits, InvalidClick, check_click
from schemas.dead_letter import bounded_copy


class Detector:
    def __init__(self, settings: Settings) -> None:
        self.limits = FieldLimits(settings.max_field_count, settings.max_field_bytes)
        self.policy = EventTimePolicy(settings.dedup_horizon_ms, settings.max_future_ms)
        # How far before its arrival a click can look back: H (its ts) + W (its window).
        self.memory_ms = settings.dedup_horizon_ms + settings.click_spam_window_ms
        # A window's index entry is raised by H past the click that passed it, so
        # that it is written about once per horizon per device, not per click.
        self.rule_args = (settings.click_spam_window_ms, settings.click_spam_threshold, self.memory_ms)
        self.index_slack_ms = settings.dedup_horizon_ms
        # Each call may remove twice as many quiet windows as a batch can create.
        self.expire_limit = 2 * settings.batch_size

    async def setup(self, client: RespClient, keys: Keys, settings: Settings) -> None:
        await ensure_filter(client.execute, keys, settings)

    def records(self, entries: Sequence[Entry]) -> list[Any]:
        """The per-entry arguments of ``fraud_detect``: 'v' records for clicks, 'd' for rejects."""
        args: list[Any] = []
        for entry_id, flat in entries:
            try:
                click = check_click(entry_id, flat, self.limits, self.policy)
            except InvalidClick as err:
                reason, copy = bounded_copy(str(err), flat, self.limits)
                args += ("d", entry_id, reason, len(copy), *copy)
                continue
            # Prefixes keep a transaction id from ever colliding with an entry id.
            member = "t:" + click.transaction_id if click.transaction_id is not None else b"e:" + entry_id
            args += ("v", entry_id, click.device_id, member, click.ts, click.ip, click.arrival - self.memory_ms,
                     len(click.fields), *click.fields)
        return args

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        lo, hi = batch_bounds([e[0] for e in entries])
        keys = ctx.keys
        reply = await ctx.client.execute(
            "FCALL", "fraud_detect", 6, keys.raw, keys.verdicts, keys.dead, keys.blacklist, keys.stats,
            keys.window_index, ctx.group, ctx.consumer, lo, hi, *self.rule_args, keys.window_prefix,
            self.index_slack_ms, self.expire_limit, *self.records(entries))
        return fenced_ids(reply)
