"""Running one agent in this process, with the shutdown users expect.

The first SIGINT/SIGTERM stops reading; the batch in hand is finished and
acknowledged, then the agent exits 0. If that takes longer than
``shutdown_timeout_ms``, or a second signal comes, the loop is cancelled:
whatever it held stays pending in Redis and is recovered later.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from pipeline.core.errors import FraudError
from pipeline.core.signals import STOP_SIGNALS
from pipeline.runtime.agent import StreamAgent

log = structlog.get_logger()



async def run_agent(agent: StreamAgent) -> int:
    loop = asyncio.get_running_loop()
    forced = asyncio.Event()

    def on_signal(signum: int) -> None:
        if agent.stopping.is_set():
            log.warning("second signal, stopping at once", signal=signal.Signals(signum).name)
            forced.set()
        else:
            log.info("stopping: finishing the batch in hand", signal=signal.Signals(signum).name)
            agent.request_stop()

    try:
        await agent.start()
    except BaseException:
        # Nothing was read yet: there is no batch to finish.
        await agent.stop()
        raise
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        # Wait for the stop request, not for the loop: a batch stuck on an unanswering
        # Redis would otherwise hold the process past the timeout and a second signal.
        await _first_of(agent.loop_done, agent.stopping)
    finally:
        finished = await _drain(agent, forced)
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    if agent.error is not None:
        raise FraudError(f"{agent.stage.name} agent failed: {agent.error!r}")
    # Non-zero tells a supervisor that a batch was cut off (it stays pending, to be recovered).
    return 0 if finished else 1


async def _first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _drain(agent: StreamAgent, forced: asyncio.Event) -> bool:
    """Let the batch in hand finish (bounded), then stop; True when it finished."""
    await _first_of(agent.loop_done, forced, timeout=agent.settings.shutdown_timeout_ms / 1000)
    finished = agent.loop_done.is_set()
    if not finished:
        log.warning("batch not finished in time, cancelling; its entries stay pending")
    await agent.stop()
    return finished
