"""``fraud group reset``: move a consumer group's last-delivered id, like Kafka's offset reset.

Without ``--execute`` it only says what would happen. It refuses while the
group has pending entries or active consumers (unless ``--force``): a reset
under a live consumer races it, and pending entries stay pending whatever the
new position.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.replies import text_pairs
from pipeline.core.stream_ids import parse_id

PAGE = 10_000


@dataclass(frozen=True)
class GroupState:
    stream: str
    group: str
    last_delivered: str
    entries_read: int | None
    pending: int
    active_consumers: list[str]


@dataclass(frozen=True)
class ResetPlan:
    state: GroupState
    new_id: str
    redelivered: int
    skipped: int
    entries_read: int | None  # None: cannot be known (entries deleted after the new id)


async def group_state(client: RespClient, stream: str, group: str, active_ms: int) -> GroupState:
    try:
        groups = [text_pairs(g) for g in await client.execute("XINFO", "GROUPS", stream)]
    except RespError:
        raise FraudError(f"no stream {stream}") from None
    info = next((g for g in groups if g["name"] == group), None)
    if info is None:
        names = ", ".join(g["name"] for g in groups) or "none"
        raise FraudError(f"no group {group!r} on {stream} (groups: {names})")
    consumers = [text_pairs(c) for c in await client.execute("XINFO", "CONSUMERS", stream, group)]
    active = [c["name"] for c in consumers if c["idle"] < active_ms]
    return GroupState(stream, group, info["last-delivered-id"], info.get("entries-read"), info["pending"], active)


async def count_between(client: RespClient, stream: str, low: str, high: str) -> int:
    """Entries with low < id <= high."""
    if parse_id(high) <= parse_id(low):
        return 0
    count = 0
    while True:
        page = await client.execute("XRANGE", stream, "(" + low, high, "COUNT", PAGE)
        count += len(page)
        if len(page) < PAGE:
            return count
        low = page[-1][0].decode()


async def plan_reset(client: RespClient, state: GroupState, new_id: str) -> ResetPlan:
    stream = text_pairs(await client.execute("XINFO", "STREAM", state.stream))
    if new_id == "$":
        new_id = stream["last-generated-id"]
    if parse_id(new_id) > parse_id(stream["last-generated-id"]):
        # Entries added later would get lower ids than the group's position and never be delivered.
        raise FraudError(f"{new_id} is beyond the last id of {state.stream} ({stream['last-generated-id']}): "
                         "use --to-latest")
    old = state.last_delivered
    redelivered = await count_between(client, state.stream, new_id, old)
    skipped = await count_between(client, state.stream, old, new_id)
    # entries-read counts logically: everything added, less what lies after the
    # new id. Exact unless an entry after it was deleted (XDEL leaves no count).
    entries_read = None
    if parse_id(stream["max-deleted-entry-id"]) <= parse_id(new_id):
        after = await count_between(client, state.stream, new_id, stream["last-generated-id"])
        entries_read = stream["entries-added"] - after
    return ResetPlan(state, new_id, redelivered, skipped, entries_read)


def describe(plan: ResetPlan, executed: bool) -> str:
    s = plan.state
    verb = ("re-delivers", "skips") if executed else ("would re-deliver", "would skip")
    lines = [f"group {s.group} on {s.stream}: last-delivered-id {s.last_delivered} -> {plan.new_id}",
             f"{verb[0]} {plan.redelivered} entries" if plan.redelivered else
             f"{verb[1]} {plan.skipped} entries" if plan.skipped else "no entries change hands",
             f"entries-read {s.entries_read} -> "
             + (str(plan.entries_read) if plan.entries_read is not None else "unknown (lag will be estimated)"),
             f"pending {s.pending}, active consumers {len(s.active_consumers)}"]
    lines.append("done" if executed else "dry run: nothing changed; add --execute to apply")
    return "\n".join(lines)
