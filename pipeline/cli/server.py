"""``fraud server start|stop|status``: the embedded Redis Stack."""

from __future__ import annotations

import argparse
import asyncio

import redis

from pipeline.core.settings import Settings
from pipeline.dev.credentials import credentials_file, with_role
from pipeline.dev.local_server import server_for
from pipeline.ops.acl import ADMIN
from pipeline.ops.setup import set_up

NOT_RUNNING_EXIT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("server", help="run the embedded Redis Stack on this machine")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    parser_class=type(parser))
    actions.add_parser("start", help="start it (a no-op if it runs)").set_defaults(run=_start)
    actions.add_parser("stop", help="stop it (a no-op if it does not run)").set_defaults(run=_stop)
    actions.add_parser("status", help="exit 0 if it runs, 3 if not").set_defaults(run=_status)


def _start(args: argparse.Namespace, settings: Settings) -> int:
    server = server_for(settings, create=True)
    if server.is_running():
        print(f"already running: pid {server.pid}, {server.url}, data {server.data_dir}")
        return 0
    server.start()
    print(f"started: pid {server.pid}, {server.url}, data {server.data_dir}, "
          f"credentials {credentials_file(settings.home, server.port)}")
    # The admin's set-up step: the agents only check that the function library is there.
    for done in asyncio.run(set_up(with_role(settings, ADMIN))):
        print(f"set up: {done}")
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    server = server_for(settings)
    pid = server.pid
    if pid is None:
        print(f"not running: {server.url}")
        return 0
    server.stop()
    print(f"stopped: pid {pid}, {server.url}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    server = server_for(settings)
    pid = server.pid
    if pid is None:
        print(f"not running: {server.url}, data {server.data_dir}")
        return NOT_RUNNING_EXIT
    try:
        modules = ", ".join(server.modules()) or "none"
    except redis.RedisError as err:
        modules = f"unknown ({err})"
    print(f"running: pid {pid}, {server.url}, data {server.data_dir}, modules: {modules}")
    return 0
