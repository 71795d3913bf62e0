"""``fraud agent <stage>``: one agent per process, for compose services and scaling."""

from __future__ import annotations

import argparse

from agents.aggregator import Aggregator
from agents.detector import Detector
from pipeline.core.settings import Settings
from pipeline.runtime.agent import Handler, StreamAgent
from pipeline.runtime.worker import run_agent

HANDLERS: dict[str, type[Detector] | type[Aggregator]] = {"detector": Detector, "aggregator": Aggregator}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agent", help="run one agent of the pipeline")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE",
                                   parser_class=type(parser))
    for name in HANDLERS:
        stage = stages.add_parser(name, help=f"run a {name} (a member of its consumer group)")
        stage.add_argument("--burst", action="store_true",
                           help="exit once the stream holds nothing more for this consumer")
        stage.add_argument("--consumer", help="consumer name (default: host-pid)")
        stage.set_defaults(run=run_stage)
    from agents.generator import register_agent
    register_agent(stages)
    from agents.monitor import register_agent as register_monitor
    register_monitor(stages)


def make_handler(stage: str, settings: Settings) -> Handler:
    return HANDLERS[stage](settings)


async def run_stage(args: argparse.Namespace, settings: Settings) -> int:
    agent = StreamAgent(make_handler(args.stage, settings), settings, burst=args.burst,
                        consumer=args.consumer)
    return await run_agent(agent)
