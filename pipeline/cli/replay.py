"""``fraud replay``: send a click file to the raw stream, re-process a range of it aside, or drop such a replay.

``fraud replay FILE`` sends a click trace to the raw stream (pipeline/replay_file.py);
``fraud replay --from-stream`` re-runs a range of it aside (pipeline/reprocess.py);
``fraud replay --drop`` deletes such a replay.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.cli.args import positive_float
from pipeline.cli.mapping_args import add_mapping_options, mapping_of
from pipeline.cli.positions import position
from pipeline.core.settings import Settings
from pipeline.ops.replay_file import print_summary, replay_file
from pipeline.ops.reprocess import check_order, drop, reprocess

# Replay names become part of key names and a SCAN pattern: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

DESCRIPTION = """Three modes:
  fraud replay FILE [--speed X]           send a JSONL/CSV click trace (or .gz, or a .zip of one)
                                          to the raw stream; with a column mapping, any CSV log
  fraud replay --from-stream --name NAME  re-process a range of the raw stream through the
                                          current rules in the key space <namespace>:replay:NAME
  fraud replay --drop --name NAME         delete that key space
Live results are never touched by --from-stream. --start/--end select raw entries by
entry id, i.e. by arrival time, not by the clicks' ts (which the copy keeps as it is).
FILE's clicks are sent now and judged against now: an old log needs --retime (or
`fraud backtest`, which replays it at its own time in a key space of its own)."""


def replay_name(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(f"must be 1-64 letters, digits, '_', '.' or '-', got {text!r}")
    return text


async def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    parser: argparse.ArgumentParser = args.parser
    modes = [m for m, on in (("FILE", args.file is not None), ("--from-stream", args.from_stream),
                             ("--drop", args.drop)) if on]
    if len(modes) != 1:
        parser.error("give exactly one of FILE, --from-stream or --drop")
    if args.file is None:
        if args.name is None:
            parser.error(f"{modes[0]} needs --name")
        if args.speed is not None:
            parser.error("--speed applies to FILE only")
    elif args.name is not None or args.start is not None or args.end is not None:
        parser.error("--name, --start and --end apply to --from-stream and --drop only")
    mapping = mapping_of(args)
    if args.file is None and (mapping is not None or args.retime):
        parser.error("a column mapping and --retime apply to FILE only")
    if args.drop:
        removed = await drop(settings, args.name)
        print(f"dropped replay {args.name!r}: {removed} keys")
        return 0
    if args.from_stream:
        start = args.start.as_start() if args.start else "-"
        end = args.end.as_end() if args.end else "+"
        check_order(start, end)
        report = await reprocess(settings, args.name, start, end)
        print(report.text())
        return 0
    print_summary(await replay_file(args.file, args.format, args.speed, settings,
                                    mapping=mapping, retime=args.retime))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("replay", help="replay a click file, or re-process a range of the raw stream",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE", help="JSONL or CSV click trace")
    parser.add_argument("--speed", type=positive_float, default=None, metavar="X",
                        help="pace on event time, X times real time (default: as fast as possible)")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto",
                        help="file format (default auto: by suffix, else by first character)")
    parser.add_argument("--retime", action="store_true",
                        help="shift every ts by one offset so that the first click happens now")
    add_mapping_options(parser)
    parser.add_argument("--from-stream", action="store_true",
                        help="re-process a range of the raw stream aside, with the current rules and blacklist")
    parser.add_argument("--start", type=position, default=None, metavar="ID|TIME",
                        help="first entry: an id, or an arrival time as epoch ms or ISO-8601 (default: the oldest)")
    parser.add_argument("--end", type=position, default=None, metavar="ID|TIME",
                        help="last entry, inclusive: an id, or an arrival time (default: the newest)")
    parser.add_argument("--name", type=replay_name, default=None, help="name of the replay's key space")
    parser.add_argument("--drop", action="store_true", help="delete the replay's key space")
    parser.set_defaults(run=run_replay, parser=parser)
