"""The ``fraud`` command: a thin argparse front over the modules that do the work.

Each concern registers its own sub-commands (``register(subparsers)``); a handler
takes the parsed arguments and the settings and returns an exit status, directly
or as a coroutine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import NoReturn

from redis.exceptions import NoPermissionError

from pipeline.client.resp import RespError
from pipeline.core.errors import FraudError
from pipeline.core.log import configure_logging
from pipeline.core.settings import Settings, SettingsError
from pipeline.dev.credentials import command_role, with_role

# Every command, in the order ``fraud --help`` lists them: one module each, with its ``register``.
COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.cli.server",
    "pipeline.cli.cluster",
    "pipeline.cli.setup",
    "pipeline.cli.acl",
    "pipeline.cli.up",
    "pipeline.cli.agent",
    "pipeline.cli.status",
    "pipeline.cli.offenders",
    "pipeline.cli.blacklist",
    "pipeline.cli.generate",
    "pipeline.cli.replay",
    "pipeline.cli.backtest",
    "pipeline.cli.group",
    "pipeline.cli.bench",
    "pipeline.cli.soak",
)


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad argument as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fraud", description="Real-time ad-click fraud detection on Redis Streams.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineParser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl+C before a command installed its own handling (while starting up).
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"fraud: error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # On the protected embedded server, each command logs in as its role without being told how.
    settings = with_role(settings, command_role(args.command, getattr(args, "stage", None)))
    try:
        outcome = args.run(args, settings)
        if inspect.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
    except FraudError as err:
        print(f"fraud: error: {err}", file=sys.stderr)
        return err.exit_code
    except (NoPermissionError, RespError) as err:
        if isinstance(err, RespError) and not str(err).startswith("NOPERM"):
            raise
        # An ACL user without the right: one line naming the command (never a secret), no traceback.
        print(f"fraud: error: Redis refused: {err}", file=sys.stderr)
        return 1
    return int(outcome or 0)


if __name__ == "__main__":
    sys.exit(main())
