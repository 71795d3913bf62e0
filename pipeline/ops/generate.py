"""``fraud generate``: a labelled synthetic click trace in a file, for ``fraud replay``.

The clicks come from the demo generator's traffic model; their event times
from a synthetic clock, so a trace is the same, byte for byte, for the same
seed, count, rate and start.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agents.generator import Click, traffic
from pipeline.cli.args import non_negative_int, positive_float, positive_int
from pipeline.core.errors import FraudError
from pipeline.core.settings import Settings
from pipeline.ops.trace_files import FORMATS, csv_columns, csv_row, jsonl_line


def labelled_trace(seed: int, count: int, start_ms: int, rate: float) -> Iterator[tuple[Click, str]]:
    """``count`` clicks with labels; the clock advances 1000/rate ms per click on average."""
    # Its own generator, so that the traffic model's draws stay those of `agent generator`.
    gaps = random.Random(f"clock:{seed}")
    now = float(start_ms)
    clicks = traffic(seed, lambda: int(now))
    for _ in range(count):
        yield next(clicks)
        now += gaps.expovariate(rate) * 1000


def write_trace(path: Path, fmt: str, seed: int, count: int, start_ms: int, rate: float) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "jsonl":
            for fields, label in labelled_trace(seed, count, start_ms, rate):
                out.write(jsonl_line(fields, label).decode())
            return
        # The trace is deterministic: a first pass finds every column the second one writes.
        columns = csv_columns(name for fields, _ in labelled_trace(seed, count, start_ms, rate)
                              for name in fields[::2])
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for fields, label in labelled_trace(seed, count, start_ms, rate):
            writer.writerow(csv_row(columns, fields, label))


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
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
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or csv")
    parser.add_argument("--start-ms", type=non_negative_int, default=None,
                        help="event time of the first click, epoch ms (default: now - clicks/rate)")
    parser.add_argument("--rate", type=positive_float, default=100.0,
                        help="clicks per second of event time, on average (default 100)")
    parser.set_defaults(run=run_generate)
