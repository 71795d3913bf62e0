"""structlog set-up: JSON lines in production, a readable console on a terminal."""

from __future__ import annotations

import logging
import re
import sys

import structlog

from pipeline.core.settings import Settings


class StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at that moment, never to a stale handle
    (a cached logger otherwise keeps the stream it first saw, which may since have been closed)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> StderrLogger:
    return StderrLogger()


def configure_logging(settings: Settings) -> None:
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )


# Query parameters that carry a secret (redis-py's from_url reads ``password`` from the query).
SECRET_QUERY_PARAMETER = re.compile(r"(?i)((?:^|[&;])(?:password|passwd|pass|pwd|auth|secret|token)=)[^&;#]*")


def redact_url(url: str) -> str:
    """The Redis URL without its passwords (user-info and query string), fit for a log line."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    address, qmark, query = rest.partition("?")
    if "@" in address:
        credentials, _, host = address.rpartition("@")
        user = credentials.split(":", 1)[0]
        address = f"{user + ':' if user else ''}***@{host}"
    query = SECRET_QUERY_PARAMETER.sub(r"\1***", query)
    return f"{scheme}{sep}{address}{qmark}{query}"
