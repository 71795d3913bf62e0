"""A member's upkeep: trimming what every group is done with in its partitions' streams."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pipeline.client.resp import RespClient, all_replies
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.core.stream_ids import id_at
from pipeline.runtime.stage import Stage
from pipeline.runtime.steps import TRIM


async def trim_done(client: RespClient, stage: Stage, keys: Keys, settings: Settings, units: Sequence[int]) -> None:
    """Trim the input and dead-letter streams of `units`, in one round trip: the polls wait while it runs."""
    now_ms = int(time.time() * 1000)
    trims: list[Any] = []
    for unit in units:
        trims.append(TRIM.argv({"stream": stage.input_stream(keys, unit)},
                               {"keep_from": id_at(now_ms - settings.stream_keep_ms)}))
        if stage.partitioned:
            # Nobody consumes dead letters as a group: they are kept for people, for a while.
            trims.append(("XTRIM", keys.partition(unit).dead, "MINID", id_at(now_ms - settings.dead_keep_ms)))
    if trims:
        all_replies(await client.pipeline(trims))
