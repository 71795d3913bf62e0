"""``fraud agent <stage>``: one agent per process, for compose services and scaling.

One sub-command per stage of ``agents.pipeline.PIPELINE``, plus the two agents that are not
stream stages: the demo traffic generator and the health monitor.
"""

from __future__ import annotations

import argparse
import time

from agents.generator import run_generator
from agents.pipeline import PIPELINE, stage
from pipeline.cli.args import non_negative_float, positive_float, positive_int
from pipeline.core.settings import Settings
from pipeline.ops.monitor import run_monitor
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.worker import run_agent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agent", help="run one agent of the pipeline")
    agents = parser.add_subparsers(dest="stage", required=True, metavar="STAGE", parser_class=type(parser))
    for declared in PIPELINE:
        sub = agents.add_parser(declared.name, help=f"{declared.help} (a member of the {declared.name} group)")
        sub.add_argument("--burst", action="store_true",
                         help="exit once the stream holds nothing more for this consumer")
        sub.add_argument("--consumer", help="consumer name (default: host-pid)")
        sub.set_defaults(run=run_stage)
    _register_generator(agents)
    _register_monitor(agents)


async def run_stage(args: argparse.Namespace, settings: Settings) -> int:
    return await run_agent(StreamAgent(stage(args.stage), settings, burst=args.burst, consumer=args.consumer))


def _register_generator(agents: argparse._SubParsersAction) -> None:
    parser = agents.add_parser("generator", help="write synthetic demo clicks to the raw stream")
    parser.add_argument("--rate", type=non_negative_float, default=500.0, help="clicks per second, 0 for flat out")
    parser.add_argument("--total", type=positive_int, default=None, help="stop after this many clicks")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed")
    parser.add_argument("--pregenerate", action="store_true",
                        help="make all --total clicks before sending (benchmarks measure sending alone)")
    parser.add_argument("--direct", action="store_true",
                        help="write each click into its partition's input instead of clicks:raw (no router hop)")
    parser.add_argument("--sends", type=positive_float, default=None,
                        help="pipelined sends a second at --rate (default: ten, of at most 200 clicks each); "
                             "many small sends stand for many producers, one burst for one batching producer")
    parser.set_defaults(run=run_generator)


def _register_monitor(agents: argparse._SubParsersAction) -> None:
    parser = agents.add_parser("monitor", help="record lag, pending, throughput and dead letters as TimeSeries")
    parser.add_argument("--interval", type=positive_float, default=5.0, metavar="SECONDS",
                        help="seconds between samples (default 5)")
    parser.add_argument("--once", action="store_true", help="record one tick (after one interval) and exit")
    parser.set_defaults(run=run_monitor)
