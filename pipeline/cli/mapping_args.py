"""The column-mapping options that ``fraud replay`` and ``fraud backtest`` share.

Options given on the command line override those of ``--mapping FILE`` (see ops/mapping.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.ops.mapping import Mapping, load_options, mapping_from


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


# option -> (mapping option, how to read the argument, help)
OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--device-id": ("device_id", _columns, "column(s) joined with ':' into device_id, e.g. ip,device,os"),
    "--ip": ("ip", str, "the ip column: text, or an integer taken as an IPv4 address"),
    "--ts": ("ts", str, "the event-time column"),
    "--ts-format": ("ts_format", str, "epoch_s, epoch_ms (default), epoch_us, iso, or a strftime pattern"),
    "--tz": ("tz", str, "time zone of times that carry none (default UTC), e.g. Asia/Shanghai"),
    "--transaction-id": ("transaction_id", _columns, "column(s) joined into transaction_id"),
    "--pass": ("pass", _columns, "columns passed through under their own names"),
}


def add_mapping_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("column mapping (a CSV log in its own layout)")
    group.add_argument("--mapping", default=None, metavar="FILE", help="a TOML file of mapping options")
    for option, (name, kind, text) in OPTIONS.items():
        group.add_argument(option, dest=f"map_{name}", type=kind, default=None, help=text)
    return group


def mapping_options(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The merged options, or None when no mapping was asked for at all."""
    options: dict[str, Any] = load_options(Path(args.mapping)) if args.mapping else {}
    for name, _, _ in OPTIONS.values():
        value = getattr(args, f"map_{name}")
        if value is not None:
            options[name] = value
    options.update({k: v for k, v in (extra or {}).items() if v is not None})
    return options or None


def mapping_of(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Mapping | None:
    options = mapping_options(args, extra)
    return None if options is None else mapping_from(options)
