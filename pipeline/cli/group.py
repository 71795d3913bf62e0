"""``fraud group reset``: move a consumer group like Kafka's offset reset tool."""

from __future__ import annotations

import argparse

from pipeline.cli.positions import entry_id, id_before_time, time_ms
from pipeline.client.connection import open_fast_client
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.groups import describe, group_state, plan_reset

HELP = """Move a consumer group's position (last-delivered-id), like Kafka's consumer-groups reset.
Without --execute, print what would happen. A time is an arrival time (as entry ids are) and maps
to the id just before <ms>-0, so entries added at that time are delivered again. Note: re-delivered
clicks that the detector has seen within FRAUD_DEDUP_HORIZON_MS are de-duplicated by its
per-device window (by transaction_id, or by entry id when a click has none): they give no second
verdict. Refused while the group has pending entries or active consumers, unless --force."""


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
