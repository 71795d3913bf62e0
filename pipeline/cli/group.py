"""``fraud group reset``: move a stage's consumer group on each of its inputs, like Kafka's offset reset tool."""

from __future__ import annotations

import argparse

from agents.pipeline import PIPELINE
from agents.pipeline import stage as stage_named
from pipeline.cli.args import non_negative_int
from pipeline.cli.positions import entry_id, id_before_time, time_ms
from pipeline.client.connection import open_fast_client
from pipeline.client.partitioning import agree_partitions
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops import groups

HELP = """Move a stage's consumer group (last-delivered-id) on each of its inputs (clicks:raw for the
router, every partition's input for the detector, every partition's verdicts for the aggregator),
like Kafka's consumer-groups reset. A partition whose newest entry is older than the target is set
to that entry. Without --execute, print what would happen. A time is an arrival time (as entry ids are) and maps
to the id just before <ms>-0, so entries added at that time are delivered again. Note: re-delivered
clicks that the detector has seen within FRAUD_DEDUP_HORIZON_MS are de-duplicated by its
per-device window (by transaction_id, or by entry id when a click has none): they give no second
verdict; the router copies no entry into its partition twice (the partition's routed mark), so
re-processing is the detector's and aggregator's; a re-delivered malformed entry gets no second
dead letter within the same horizon. The aggregator counts re-delivered verdicts again (series,
offender buckets): reset it only to rebuild counts whose keys were deleted first. Refused while the
stage has live members or live leases on its inputs, unless --force."""


def target_id(args: argparse.Namespace) -> str:
    if args.to_id is not None:
        return str(args.to_id)
    if args.to_time is not None:
        return id_before_time(args.to_time)
    return "0-0" if args.to_earliest else "$"


async def run_reset(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    stage = stage_named(args.stage)
    units = stage.units(settings)
    if args.partition:
        if not stage.partitioned:
            raise FraudError(f"stage {stage.name} has no partitions: it reads {stage.input_stream(keys)} alone")
        outside = sorted(set(args.partition) - set(units))
        if outside:
            raise FraudError(f"no partition {', '.join(map(str, outside))}: "
                             f"the pipeline has {len(units)} (0-{units[-1]})")
        units = sorted(set(args.partition))
    client = await open_fast_client(settings)
    try:
        await agree_partitions(client.execute, keys, settings.partitions, record=False)
        now_ms = await groups.server_time_ms(client)
        states = [await groups.group_state(client, keys, stage, unit, now_ms) for unit in units]
        members = await groups.live_members(client, keys, stage, now_ms)
        busy = groups.refusals(states, members)
        if busy and not args.force:
            raise FraudError(f"stage {stage.name} has {' and '.join(busy)}: stop its agents and let them "
                             "finish first, or pass --force")
        plans = await groups.plan_stage_reset(client, states, target_id(args))
        if args.execute:
            for plan in plans:
                await groups.apply(client, plan)
        print(groups.describe(plans, members, args.execute))
    finally:
        await client.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("group", help="manage consumer groups")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(parser))
    reset = actions.add_parser("reset", help="move a group to an id, a time, the start or the end",
                               description=HELP)
    reset.add_argument("--stage", "--group", dest="stage", choices=[s.name for s in PIPELINE], required=True,
                       help="the stage whose group moves (the group is named after it) on each of its inputs: "
                            "clicks:raw for the router, every partition's for the others")
    reset.add_argument("--partition", type=non_negative_int, action="append", metavar="P",
                       help="only this partition (repeat for several; default: all of them)")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-id", type=entry_id, metavar="ID", help="deliver what comes after this entry id")
    to.add_argument("--to-time", type=time_ms, metavar="TIME", help="deliver from this time on (epoch ms or ISO-8601)")
    to.add_argument("--to-earliest", action="store_true", help="deliver the whole stream again")
    to.add_argument("--to-latest", action="store_true", help="skip everything in the stream now")
    reset.add_argument("--execute", action="store_true", help="apply (default: dry run)")
    reset.add_argument("--force", action="store_true",
                       help="reset even while the stage has live members or leases")
    reset.set_defaults(run=run_reset)
