"""``fraud up``: every agent of the pipeline, supervised, with a live view."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import structlog
from redis.exceptions import NoPermissionError

from agents.generator import blacklisted_ips
from agents.pipeline import PIPELINE
from pipeline.cli.args import positive_float, positive_int
from pipeline.client.connection import open_redis
from pipeline.client.resp import RespError
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.signals import stop_on_signals
from pipeline.ops.blacklist import add_ips
from pipeline.ops.live_view import LiveView
from pipeline.ops.setup import set_up
from pipeline.ops.status import open_status_client
from pipeline.runtime.supervisor import Child, supervise

log = structlog.get_logger()


def plan(args: argparse.Namespace) -> list[Child]:
    """One child per agent: as many of each stage as asked, the monitor, and the demo generator."""
    children = [Child(f"{stage.name}-{i + 1}", ["agent", stage.name])
                for stage in PIPELINE for i in range(getattr(args, _count_option(stage.name)))]
    children.append(Child("monitor", ["agent", "monitor"]))
    if args.demo:
        children.append(Child("generator", ["agent", "generator", "--rate", str(args.rate)]))
    return children


def _count_option(stage: str) -> str:
    return f"{stage}s"


async def load_demo_blacklist(settings: Settings) -> int:
    client = await open_redis(settings)
    try:
        return await add_ips(client, Keys(settings.namespace), settings, blacklisted_ips())
    finally:
        await client.aclose()


async def set_up_if_allowed(settings: Settings) -> None:
    """The admin's set-up step when this URL's user may (the local server's admin, or a URL with
    admin rights); otherwise the agents wait for an admin's `fraud setup`, saying so."""
    try:
        log.info("set up", done=await set_up(settings))
    except (RespError, NoPermissionError) as err:
        if "NOPERM" not in str(err) and not isinstance(err, NoPermissionError):
            raise
        log.warning("not allowed to set up; agents wait for an admin's `fraud setup`", error=str(err))


async def run_up(args: argparse.Namespace, settings: Settings) -> int:
    client = await open_status_client(settings)  # fails early, in one line, when Redis is not there
    await set_up_if_allowed(settings)
    if args.demo:
        added = await load_demo_blacklist(settings)
        log.info("demo blacklist loaded", addresses=added)
    children = plan(args)
    stop = stop_on_signals()
    view = LiveView(client, Keys(settings.namespace), agents=lambda: [c.describe() for c in children])
    # The view runs beside the supervision, never in its way: a reading that hangs on a slow
    # server or fails on a restarted one cannot delay a restart, nor end the agents.
    view_task = asyncio.create_task(view.run(stop, args.refresh))
    try:
        await supervise(children, settings.home / "logs", stop, settings.shutdown_timeout_ms / 1000 + 5)
    finally:
        view_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await view_task
        await client.aclose()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run the whole pipeline, supervised, until Ctrl+C")
    parser.add_argument("--demo", action="store_true",
                        help="add synthetic traffic (humans, bot bursts, blacklisted IPs, retries, malformed)")
    parser.add_argument("--rate", type=positive_float, default=300.0, help="demo clicks per second")
    for stage in PIPELINE:
        parser.add_argument(f"--{_count_option(stage.name)}", type=positive_int, default=1,
                            help=f"how many {stage.name} agents (default 1)")
    parser.add_argument("--refresh", type=positive_float, default=1.0, help="seconds between live updates")
    parser.set_defaults(run=run_up)
