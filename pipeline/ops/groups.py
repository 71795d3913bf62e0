"""``fraud group reset``: move a consumer group's last-delivered id, like Kafka's offset reset.

Without ``--execute`` it only says what would happen. It refuses while the
group has pending entries or active consumers (unless ``--force``): a reset
under a live consumer races it, and pending entries stay pending whatever the
new position.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from pipeline.cli.positions import entry_id, id_before_time, time_ms
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient, RespError
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import parse_id

PAGE = 10_000


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {k.decode(): v.decode() if isinstance(v, bytes) else v for k, v in zip(flat[::2], flat[1::2],
                                                                                    strict=True)}


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
        groups = [_pairs(g) for g in await client.execute("XINFO", "GROUPS", stream)]
    except RespError:
        raise FraudError(f"no stream {stream}") from None
    info = next((g for g in groups if g["name"] == group), None)
    if info is None:
        names = ", ".join(g["name"] for g in groups) or "none"
        raise FraudError(f"no group {group!r} on {stream} (groups: {names})")
    consumers = [_pairs(c) for c in await client.execute("XINFO", "CONSUMERS", stream, group)]
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
    stream = _pairs(await client.execute("XINFO", "STREAM", state.stream))
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


def target_id(args: argparse.Namespace) -> str:
    if args.to_id is not None:
        return str(args.to_id)
    if args.to_time is not None:
        return id_before_time(args.to_time)
    return "0-0" if args.to_earliest else "$"


async def run_reset(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    stream = keys.raw if args.stream == "raw" else keys.verdicts
    client = await open_fast_client(settings)
    try:
        state = await group_state(client, stream, args.group, 2 * settings.block_ms)
        if not args.force and (state.pending or state.active_consumers):
            busy = [f"{state.pending} pending entries"] if state.pending else []
            if state.active_consumers:
                busy.append("active consumers " + ", ".join(state.active_consumers))
            raise FraudError(f"group {args.group} on {stream} has {' and '.join(busy)}: stop its agents "
                             "and let them finish first, or pass --force")
        plan = await plan_reset(client, state, target_id(args))
        if args.execute:
            extra = ("ENTRIESREAD", plan.entries_read) if plan.entries_read is not None else ()
            await client.execute("XGROUP", "SETID", stream, args.group, plan.new_id, *extra)
        print(describe(plan, args.execute))
    finally:
        await client.close()
    return 0


HELP = """Move a consumer group's position (last-delivered-id), like Kafka's consumer-groups reset.
Without --execute, print what would happen. A time is an arrival time (as entry ids are) and maps
to the id just before <ms>-0, so entries added at that time are delivered again. Note: re-delivered
clicks that the detector has seen within FRAUD_DEDUP_HORIZON_MS are de-duplicated by its
per-device window (by transaction_id, or by entry id when a click has none): they give no second
verdict. Refused while the group has pending entries or active consumers, unless --force."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("group", help="manage consumer groups")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(parser))
    reset = actions.add_parser("reset", help="move a group to an id, a time, the start or the end",
                               description=HELP)
    reset.add_argument("--stream", choices=("raw", "verdicts"), required=True, help="which stream")
    reset.add_argument("--group", required=True, help="group name (detector on raw, aggregator on verdicts)")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-id", type=entry_id, metavar="ID", help="deliver what comes after this entry id")
    to.add_argument("--to-time", type=time_ms, metavar="TIME", help="deliver from this time on (epoch ms or ISO-8601)")
    to.add_argument("--to-earliest", action="store_true", help="deliver the whole stream again")
    to.add_argument("--to-latest", action="store_true", help="skip everything in the stream now")
    reset.add_argument("--execute", action="store_true", help="apply (default: dry run)")
    reset.add_argument("--force", action="store_true",
                       help="reset even with pending entries or active consumers")
    reset.set_defaults(run=run_reset)
