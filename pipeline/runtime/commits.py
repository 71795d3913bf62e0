"""A batch's commit: the dead-lettering step (and an entry that fails alone, dead-lettered), and
where an offset stands. What a step's reply says is read by ``BatchContext.outcome``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.client.create import create_once
from pipeline.client.resp import RespClient, RespConnectionError, RespError, is_server_state_error
from pipeline.client.step import counted
from pipeline.core.replies import text_pairs
from pipeline.runtime.stage import BatchContext, Entry, Handler
from pipeline.runtime.steps import REJECT
from schemas.click import FieldLimits
from schemas.dead_letter import bounded_copy


@dataclass
class Rejection:
    entry_id: bytes
    reason: str
    fields: Sequence[bytes | str] = ()


async def reject(ctx: BatchContext, rejections: Sequence[Rejection]) -> list[bytes]:
    """Dead-letter entries with their reasons and commit them, atomically and fenced. Each copy is
    bounded (fields cut to the limits, what was cut said in the reason), so it can always be written."""
    limits = FieldLimits(ctx.settings.max_field_count, ctx.settings.max_field_bytes)
    records = [counted((r.entry_id, reason), fields)
               for r in rejections for reason, fields in [bounded_copy(r.reason, r.fields, limits)]]
    assert ctx.partition is not None
    keys, params = ctx.fence([(r.entry_id, None) for r in rejections])
    reply = await ctx.client.execute(*REJECT.argv(
        {**keys, "dead": ctx.partition.dead, "stats": ctx.partition.stats}, params, {"entries": records}))
    return ctx.outcome(reply)


def entries_to_blame(err: Exception) -> bool:
    """Whether a failed step may be the entries' fault (then they are isolated, and a poison one
    dead-lettered), rather than the connection's or the server's state (then it is waited out)."""
    return not isinstance(err, RespConnectionError | OSError) and not is_server_state_error(err)


async def apply_or_reject(handler: Handler, ctx: BatchContext, entry: Entry, events: Any) -> list[bytes]:
    """Apply one entry alone; dead-letter it (`error: ...`) when it makes the step fail by itself."""
    try:
        return await handler.handle(ctx, [entry])
    except Exception as err:
        if not entries_to_blame(err) or ctx.partition is None:
            raise
        events.error("entry made the stage fail, dead-lettering it", entry_id=entry[0].decode(), error=repr(err))
        return await reject(ctx, [Rejection(entry[0], f"error: {type(err).__name__}: {err}"[:500], entry[1] or ())])


async def committed_offset(client: RespClient, stream: str, group: str) -> bytes:
    """The group's committed offset on `stream`, the group created at the start when missing."""
    await create_once(client.execute, "XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    for info in await client.execute("XINFO", "GROUPS", stream):
        fields = text_pairs(info)
        if fields.get("name") == group:
            return fields["last-delivered-id"].encode()
    raise RespError(f"ERR group {group} vanished from {stream}")
