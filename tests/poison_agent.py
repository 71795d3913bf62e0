"""A detector process whose handler dies, or hangs, on a marked click: ``python -m tests.poison_agent NAME``.

The real thing for a poison pill that kills its process (no exception the runtime could isolate):
``POISON_ACTION=exit`` ends the process with ``os._exit(1)`` as soon as a batch it is about to
apply holds a click with the field ``poison``; ``POISON_ACTION=hang`` writes the file
``POISON_HANG_FILE`` and blocks the whole process there (for the test to SIGKILL it at that
point: its batch begun and not committed, for certain); otherwise it is a plain detector.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agents.detector import Detector
from agents.pipeline import DETECTOR
from pipeline.core.log import configure_logging
from pipeline.core.settings import Settings
from pipeline.runtime.agent import StreamAgent
from pipeline.runtime.stage import BatchContext, Entry
from pipeline.runtime.worker import run_agent

MARK = b"poison"


def marked(entries: Sequence[Entry]) -> bool:
    return any(fields and MARK in fields[::2] for _, fields in entries)


class PoisonedDetector(Detector):
    def __init__(self, settings: Settings, action: str, hang_file: str) -> None:
        super().__init__(settings)
        self.action = action
        self.hang_file = hang_file

    async def handle(self, ctx: BatchContext, entries: Sequence[Entry]) -> list[bytes]:
        if marked(entries) and self.action == "exit":
            os._exit(1)
        if marked(entries) and self.action == "hang":
            stand_still(Path(self.hang_file), ctx.after)
        return await super().handle(ctx, entries)


def stand_still(signal_file: Path, after: bytes) -> None:
    """Say where (the offset the batch follows), then block the whole process, event loop and all,
    as a hung one does: no heartbeat, no step, nothing more sent to Redis."""
    signal_file.write_text(after.decode())
    time.sleep(3600)


def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings)
    handler = PoisonedDetector(settings, os.environ.get("POISON_ACTION", ""), os.environ.get("POISON_HANG_FILE", ""))
    return asyncio.run(run_agent(StreamAgent(DETECTOR, settings, handler=handler, consumer=sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
