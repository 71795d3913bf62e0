"""Signals, installed in one place: the first SIGINT or SIGTERM asks a command to stop."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals() -> asyncio.Event:
    """An event that the first SIGINT/SIGTERM sets (for commands that stop at their next tick)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    return stop


def release_signals() -> None:
    """Give SIGINT/SIGTERM back to their defaults (a command that returns to its caller)."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)
