"""``fraud backtest FILE``: how would the current rules have done on a labelled click log?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from pipeline.cli.args import positive_int
from pipeline.cli.mapping_args import add_mapping_options, mapping_of
from pipeline.cli.replay import replay_name
from pipeline.core.settings import Settings
from pipeline.ops.backtest import BacktestRun, backtest, with_setting
from pipeline.ops.backtest_report import sweep_header, sweep_row

DESCRIPTION = """Send a labelled CSV click log (plain, .gz or a .zip of one file), each row arriving
at its own event time, through every stage in the key space <namespace>:replay:NAME, then
print per verdict and overall the confusion matrix against the label column, with
precision and recall. Live keys are only read (the live blacklist is copied). Rows are
taken in file order: one earlier than a row before it arrives late, and more than
FRAUD_DEDUP_HORIZON_MS late it is dead-lettered ts_too_old, as it would be live.
--sweep threshold=1,2,3 (or window_ms=...) runs once per value, one row each."""


def sweep(text: str) -> tuple[str, list[int]]:
    name, _, values = text.partition("=")
    if name not in ("threshold", "window_ms") or not values:
        raise argparse.ArgumentTypeError(f"expected threshold=V,V... or window_ms=V,V..., got {text!r}")
    try:
        return name, [positive_int(v) for v in values.split(",")]
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"values must be positive integers, got {values!r}") from None


def speeds(run: BacktestRun) -> str:
    send = run.sent / run.send_seconds if run.send_seconds > 0 else 0.0
    judge = run.sent / run.judge_seconds if run.judge_seconds > 0 else 0.0
    return (f"read, mapped and sent {run.sent} clicks ({run.bad_lines} bad lines) in {run.send_seconds:.2f} s "
            f"({send:,.0f} clicks/s); judged in {run.judge_seconds:.2f} s ({judge:,.0f} clicks/s)")


async def run_backtest(args: argparse.Namespace, settings: Settings) -> int:
    extra = {"label": args.label}
    # What counts as fraud, given on the command line, replaces the mapping file's say entirely.
    if args.fraud_if_empty:
        extra.update(fraud_if_empty=True, fraud_values=())
    elif args.fraud_value:
        extra.update(fraud_values=args.fraud_value, fraud_if_empty=False)
    mapping = mapping_of(args, extra)
    if mapping is None:
        args.parser.error("name the columns: --mapping FILE, or --device-id, --ip, --ts and --label")
    progress = None if args.json or not sys.stderr.isatty() else sys.stderr
    if args.sweep is None:
        run = await backtest(settings, args.name, args.file, args.format, mapping, keep=args.keep,
                             progress_out=progress)
        if args.json:
            print(orjson.dumps({**run.outcomes.as_json(), "sent": run.sent, "bad_lines": run.bad_lines,
                                "send_seconds": run.send_seconds, "judge_seconds": run.judge_seconds}).decode())
        else:
            print(run.outcomes.text())
            print(speeds(run))
        return 0
    name, values = args.sweep
    runs = []
    if not args.json:
        print(sweep_header())
    for value in values:
        run = await backtest(with_setting(settings, name, value), args.name, args.file, args.format, mapping,
                             setting=f"{name}={value}", progress_out=progress)
        runs.append(run)
        if not args.json:
            print(sweep_row(run.setting, run.outcomes), flush=True)
    if args.json:
        print(orjson.dumps([{"setting": r.setting, **r.outcomes.as_json()} for r in runs]).decode())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backtest", help="judge a labelled click log aside; confusion matrix",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, metavar="FILE", help="labelled CSV click log")
    parser.add_argument("--format", choices=("auto", "csv"), default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--name", type=replay_name, default="backtest",
                        help="name of the key space (default backtest)")
    parser.add_argument("--keep", action="store_true", help="keep the key space to look at (drop it later "
                        "with fraud replay --drop --name NAME)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    parser.add_argument("--sweep", type=sweep, default=None, metavar="SETTING=V,V...",
                        help="one run per value of threshold or window_ms; one row each")
    group = add_mapping_options(parser)
    group.add_argument("--label", default=None, help="the label column")
    group.add_argument("--fraud-value", action="append", default=None, metavar="V",
                       help="a label value that means fraud (repeatable)")
    group.add_argument("--fraud-if-empty", action="store_true",
                       help="fraud is an empty label cell (e.g. no attributed_time)")
    parser.set_defaults(run=run_backtest, parser=parser)
