"""``fraud setup``: the admin's set-up step (function library, groups, filter, series)."""

from __future__ import annotations

import argparse

from pipeline.core.settings import Settings
from pipeline.ops.setup import set_up


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup", help="load the function library and create the groups, filter and series (admin)")
    parser.set_defaults(run=_setup)


async def _setup(args: argparse.Namespace, settings: Settings) -> int:
    for done in await set_up(settings):
        print(done)
    return 0
