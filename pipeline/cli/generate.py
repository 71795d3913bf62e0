"""``fraud generate``: write a labelled synthetic trace to a file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.cli.args import non_negative_int, positive_float, positive_int
from pipeline.core.errors import FraudError
from pipeline.core.settings import Settings
from pipeline.ops.generate import write_trace
from pipeline.ops.sample_log import DEFAULT_START_S, write_sample
from pipeline.ops.trace_files import FORMATS


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    if args.layout == "talkingdata":
        start_s = DEFAULT_START_S if args.start_ms is None else args.start_ms // 1000
        try:
            write_sample(args.out, args.seed, args.clicks, start_s)
        except OSError as err:
            raise FraudError(f"cannot write {args.out}: {err.strerror or err}") from None
        print(f"wrote {args.clicks} rows to {args.out} (TalkingData layout, seed {args.seed}, "
              f"click_time from {start_s} s)", file=sys.stderr)
        return 0
    start_ms = args.start_ms if args.start_ms is not None else int(
        time.time() * 1000 - args.clicks / args.rate * 1000)
    try:
        write_trace(args.out, args.format, args.seed, args.clicks, start_ms, args.rate)
    except OSError as err:
        raise FraudError(f"cannot write {args.out}: {err.strerror or err}") from None
    print(f"wrote {args.clicks} clicks to {args.out} ({args.format}, seed {args.seed}, "
          f"event time from {start_ms} ms)", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="write a labelled synthetic click trace (JSONL or CSV) for `fraud replay`",
        description="Write a labelled synthetic click trace. The same seed, --clicks, --rate and "
                    "--start-ms give the same bytes. In CSV an empty cell means the field is absent.")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--clicks", type=positive_int, default=10_000, help="how many clicks (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--layout", choices=("wire", "talkingdata"), default="wire",
                        help="wire (default): our click fields; talkingdata: a labelled CSV log in the "
                             "public TalkingData AdTracking layout, for fraud backtest (.gz/.zip by suffix)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or csv")
    parser.add_argument("--start-ms", type=non_negative_int, default=None,
                        help="event time of the first click, epoch ms (default: now - clicks/rate)")
    parser.add_argument("--rate", type=positive_float, default=100.0,
                        help="clicks per second of event time, on average (default 100)")
    parser.set_defaults(run=run_generate)
