"""``fraud group reset``: move a stage's group on each of its inputs, like Kafka's offset reset.

A stage's group lives on every input of the stage: ``clicks:raw`` for the router, each
partition's input (or verdicts) for a partitioned stage. A reset moves the group's position
(``XGROUP SETID``, with the exact ``ENTRIESREAD`` when it can be known) on each of them, so the
stage re-processes everything after the new id, or skips up to it. A partition whose newest
entry is older than the id is set to that entry instead: a group never stands beyond its
stream's end, where entries added later would be skipped.

Without ``--execute`` it only says what would happen. It refuses while the stage has live members
or live owners of the inputs (unless ``--force``): their next batch would be fenced off and read
again from the new position, but a reset is meant for a stopped stage, on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.replies import text_pairs
from pipeline.core.stream_ids import parse_id
from pipeline.ops.status_table import table
from pipeline.runtime.stage import Stage

PAGE = 10_000


@dataclass(frozen=True)
class GroupState:
    stream: str
    group: str
    partition: int | None
    last_delivered: str
    entries_read: int | None
    pending: int
    # Who holds the input's lease by the server's clock; None when it is free or ran out.
    owner: str | None


@dataclass(frozen=True)
class ResetPlan:
    state: GroupState
    new_id: str
    redelivered: int
    skipped: int
    entries_read: int | None  # None: cannot be known (entries deleted after the new id)
    # The wanted id was past the stream's newest entry: the plan stops there instead.
    clamped: bool = False


async def server_time_ms(client: RespClient) -> int:
    seconds, micros = await client.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def live_members(client: RespClient, keys: Keys, stage: Stage, now_ms: int) -> list[str]:
    """The stage's members whose heartbeat has not run out by the server's clock."""
    return sorted(m.decode() for m in await client.execute(
        "ZRANGEBYSCORE", keys.members(stage.name), f"({now_ms}", "+inf"))


async def group_state(client: RespClient, keys: Keys, stage: Stage, unit: int, now_ms: int) -> GroupState:
    stream = stage.input_stream(keys, unit)
    try:
        groups = [text_pairs(g) for g in await client.execute("XINFO", "GROUPS", stream)]
    except RespError:
        raise FraudError(f"no stream {stream}: the stage never ran there (fraud setup creates it)") from None
    info = next((g for g in groups if g["name"] == stage.name), None)
    if info is None:
        names = ", ".join(g["name"] for g in groups) or "none"
        raise FraudError(f"no group {stage.name!r} on {stream} (groups: {names})")
    lease = text_pairs(await client.execute("HGETALL", stage.lease_key(keys, unit)))
    owner = lease.get("owner") or None
    live = owner if owner is not None and int(lease.get("until") or 0) > now_ms else None
    return GroupState(stream, stage.name, unit if stage.partitioned else None, info["last-delivered-id"],
                      info.get("entries-read"), info["pending"], live)


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


async def plan_reset(client: RespClient, state: GroupState, new_id: str, clamp: bool = False) -> ResetPlan:
    """What moving the group to `new_id` (``$``: the stream's end) re-delivers or skips. An id past
    the stream's end is refused, or with `clamp` replaced by the end."""
    stream = text_pairs(await client.execute("XINFO", "STREAM", state.stream))
    end = stream["last-generated-id"]
    clamped = new_id != "$" and parse_id(new_id) > parse_id(end)
    if clamped and not clamp:
        # Entries added later would get lower ids than the group's position and never be delivered.
        raise FraudError(f"{new_id} is beyond the last id of {state.stream} ({end}): use --to-latest")
    if new_id == "$" or clamped:
        new_id = end
    old = state.last_delivered
    redelivered = await count_between(client, state.stream, new_id, old)
    skipped = await count_between(client, state.stream, old, new_id)
    # entries-read counts logically: everything added, less what lies after the
    # new id. Exact unless an entry after it was deleted (XDEL leaves no count).
    entries_read = None
    if parse_id(stream["max-deleted-entry-id"]) <= parse_id(new_id):
        after = await count_between(client, state.stream, new_id, end)
        entries_read = stream["entries-added"] - after
    return ResetPlan(state, new_id, redelivered, skipped, entries_read, clamped)


async def plan_stage_reset(client: RespClient, states: Sequence[GroupState], new_id: str) -> list[ResetPlan]:
    """Plans for every input of a stage. Partitions end at different ids: one whose end is before
    `new_id` is set to its end; only an id past every input's end is refused."""
    partitioned = states[0].partition is not None
    plans = [await plan_reset(client, state, new_id, clamp=partitioned) for state in states]
    if partitioned and all(p.clamped for p in plans):
        ends = max((p.new_id for p in plans), key=parse_id)
        raise FraudError(f"{new_id} is beyond the last id of every partition (the newest is {ends}): "
                         "use --to-latest")
    return plans


def refusals(states: Sequence[GroupState], members: Sequence[str]) -> list[str]:
    """Why a reset without --force is refused: who is still running the stage, what is pending."""
    why = [f"live members {', '.join(members)}"] if members else []
    owned = [f"{s.stream} by {s.owner}" for s in states if s.owner is not None]
    if owned:
        why.append("live leases on " + ", ".join(owned))
    pending = sum(s.pending for s in states)
    if pending:
        why.append(f"{pending} pending entries")
    return why


async def apply(client: RespClient, plan: ResetPlan) -> None:
    extra = ("ENTRIESREAD", plan.entries_read) if plan.entries_read is not None else ()
    await client.execute("XGROUP", "SETID", plan.state.stream, plan.state.group, plan.new_id, *extra)


def describe(plans: Sequence[ResetPlan], members: Sequence[str], executed: bool) -> str:
    def entries_read(plan: ResetPlan) -> str:
        new = str(plan.entries_read) if plan.entries_read is not None else "unknown"
        return f"{'-' if plan.state.entries_read is None else plan.state.entries_read} -> {new}"

    redelivered, skipped = sum(p.redelivered for p in plans), sum(p.skipped for p in plans)
    verb = ("re-delivers", "skips") if executed else ("would re-deliver", "would skip")
    lines = [f"group {plans[0].state.group} on {len(plans)} input(s):"]
    lines += table(("STREAM", "LAST DELIVERED", "NEW ID", "RE-DELIVERED", "SKIPPED", "ENTRIES READ"),
                   [(p.state.stream, p.state.last_delivered, p.new_id + (" (its end)" if p.clamped else ""),
                     p.redelivered, p.skipped, entries_read(p)) for p in plans])
    lines.append(f"{verb[0]} {redelivered} entries" if redelivered else
                 f"{verb[1]} {skipped} entries" if skipped else "no entries change hands")
    if any(p.entries_read is None for p in plans):
        lines.append("entries-read unknown where entries after the new id were deleted: lag will be estimated")
    owners = [p.state.owner for p in plans if p.state.owner is not None]
    lines.append(f"pending {sum(p.state.pending for p in plans)}, live members {len(members)}, "
                 f"live leases {len(owners)}")
    lines.append("done" if executed else "dry run: nothing changed; add --execute to apply")
    return "\n".join(lines)
