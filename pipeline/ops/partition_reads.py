"""What the tools read of a partitioned pipeline: counters summed over the partitions, and whether
every stage has committed all of its inputs.

The counters live in one stats hash per partition (``<ns>:{p}:stats``); a pipeline-wide figure is
their sum. A stage is done with an input when its group's committed offset has reached the input's
newest entry: the step commits the offset with the batch's effects, so nothing is in flight then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agents.pipeline import PIPELINE
from pipeline.client.resp import RespClient, all_replies
from pipeline.core.keys import Keys
from pipeline.core.replies import pairs, text_pairs
from pipeline.runtime.stage import Stage


async def stats_totals(client: RespClient, keys: Keys, partitions: int) -> dict[str, int]:
    """Every counter (``detector.clean``, ``router.routed``...) summed over the partitions."""
    replies = await client.pipeline([("HGETALL", part.stats) for part in keys.partitions(partitions)])
    totals: Counter[str] = Counter()
    for reply in all_replies(replies):
        totals.update({name: int(value) for name, value in text_pairs(reply).items()})
    return dict(totals)


async def input_drained(client: RespClient, stream: str, group: str) -> bool:
    """Whether `group` has committed everything `stream` holds (False while the group is missing)."""
    if not await client.execute("EXISTS", stream):
        return False
    newest = pairs(await client.execute("XINFO", "STREAM", stream))[b"last-generated-id"]
    for info in await client.execute("XINFO", "GROUPS", stream):
        fields = pairs(info)
        if fields[b"name"].decode() == group:
            # The lag is exact while the offsets move with ENTRIESREAD; it is unknown (nil) after
            # deletions inside the group's range, where the ids still tell.
            lag = fields.get(b"lag")
            return lag == 0 or (lag is None and fields[b"last-delivered-id"] == newest)
    return False


async def stage_drained(client: RespClient, keys: Keys, partitions: int, stage: Stage) -> bool:
    for unit in stage.units_of(partitions):
        if not await input_drained(client, stage.input_stream(keys, unit), stage.name):
            return False
    return True


async def pipeline_drained(client: RespClient, keys: Keys, partitions: int,
                           stages: Sequence[Stage] = PIPELINE) -> bool:
    """Every stage has committed all its inputs. Checked in flow order, so that what an earlier
    stage had passed on when it was seen done is in the later stages' inputs when they are checked."""
    for stage in stages:
        if not await stage_drained(client, keys, partitions, stage):
            return False
    return True
