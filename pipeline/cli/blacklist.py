"""``fraud blacklist add|remove|check|load``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.client.connection import open_redis
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.ops.blacklist import add_ips, canonical_ips, check_ips, read_ip_file, remove_ips


async def run_blacklist(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    if args.action == "load":
        ips, bad = read_ip_file(args.file)
        for message in bad:
            print(message, file=sys.stderr)
    else:
        ips, bad = canonical_ips(args.ips), []
    client = await open_redis(settings)
    try:
        if args.action in ("add", "load"):
            added = await add_ips(client, keys, settings, ips)
            print(f"added {added} address(es), {len(ips) - added} already listed")
        elif args.action == "remove":
            removed = await remove_ips(client, keys, settings, ips)
            print(f"removed {removed} address(es), {len(ips) - removed} were not listed")
        else:
            for ip, listed, in_filter in await check_ips(client, keys, settings, ips):
                note = "" if listed == in_filter else " (filter false positive: the detector flags it)"
                print(f"{ip} {'listed' if listed else 'not listed'}{note}")
    finally:
        await client.aclose()
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("blacklist", help="manage the IP blacklist")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(parser))
    for action, text in (("add", "list addresses"), ("remove", "unlist addresses"),
                         ("check", "tell whether addresses are listed")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("ips", nargs="+", metavar="IP")
        sub.set_defaults(run=run_blacklist)
    load = actions.add_parser("load", help="list every address of a file (one a line, # comments)")
    load.add_argument("file", type=Path)
    load.set_defaults(run=run_blacklist)
