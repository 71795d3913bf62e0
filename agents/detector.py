"""The detector stage: raw clicks in, one verdict per click out.

Python checks each entry and shapes it; the rules themselves (blacklist,
per-device sliding window, de-duplication) run server-side in ``fraud_detect``,
one atomic call per batch, together with the verdicts' XADD and the XACK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.blacklist import ensure_filter
from pipeline.client.resp import RespClient
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import batch_bounds
from pipeline.runtime.agent import BatchContext, Entry, fenced_ids
from schemas.click import FieldLimits, InvalidClick, check_click


class Detector:
    def __init__(self, settings: Settings) -> None:
        self.limits = FieldLimits(settings.max_field_count, settings.max_field_bytes)
        self.rule_args = (settings.click_spam_window_ms, settings.click_spam_threshold,
                          settings.dedup_horizon_ms)

    async def setup(self, client: RespClient, keys: Keys, settings: Settings) -> None:
        await ensure_filter(client.execute, keys, settings)

    def records(self, entries: Sequence[Entry]) -> list[Any]:
        """The per-entry arguments of ``fraud_detect``: 'v' records for clicks, 'd' for rejects."""
        args: list[Any] = []
        for entry_id, flat in entries:
            try:
                click = check_click(entry_id, flat, self.limits)
            except InvalidClick as err:
                original = flat or ()
                args += ("d", entry_id, str(err), len(original), *original)
                continue
            # Prefixes keep a transaction id from ever colliding with an entry id.
            member = "t:" + click.transaction_id if click.transaction_id is not None else b"e:" + entry_id
            args += ("v", entry_id, click.device_id, member, click.ts, click.ip, len(click.fields),
                     *click.fields)
        return args

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        lo, hi = batch_bounds([e[0] for e in entries])
        keys = ctx.keys
        reply = await ctx.client.execute(
            "FCALL", "fraud_detect", 5, keys.raw, keys.verdicts, keys.dead, keys.blacklist, keys.stats,
            ctx.group, ctx.consumer, lo, hi, *self.rule_args, keys.window_prefix,
            *self.records(entries))
        return fenced_ids(reply)
