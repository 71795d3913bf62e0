"""What the monitor agent keeps in step besides the health series, once per tick: what the
dashboard needs to read the same way on one server and on Redis Cluster.

- RedisTimeSeries' view of the cluster (``timeseries_cluster.refresh_stale``): after a failover
  or a restart, ``TS.MRANGE`` fails or counts one shard until it is refreshed;
- the merged offender buckets (``offenders.merge_offenders``): at the first tick every bucket of
  the retention, then each tick the buckets the aggregator's progress since the last can have
  changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog

from pipeline.client.cluster import ClusterClient
from pipeline.client.connection import open_fast_client
from pipeline.client.resp import RespClient, RespError, is_server_state_error
from pipeline.core.errors import RedisUnavailableError
from pipeline.core.settings import Settings
from pipeline.ops.offenders import counted_arrivals, merge_offenders
from pipeline.ops.timeseries_cluster import refresh_stale

log = structlog.get_logger()

# With no series retention (kept forever) the first merge still looks back this far.
DEFAULT_LOOKBACK_MS = 7 * 24 * 3_600_000


class Upkeep:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fast: RespClient | ClusterClient | None = None
        # The aggregator's position per partition at the last merge; None: nothing merged yet.
        self.positions: dict[int, str | None] | None = None

    async def run(self, client: aioredis.Redis, snap: Mapping[str, Any]) -> None:
        refreshed = await refresh_stale(client)
        if refreshed:
            log.info("timeseries cluster view refreshed", masters=refreshed)
        try:
            await self._merge(snap)
        except (RespError, RedisUnavailableError) as err:
            if not (is_server_state_error(err) if isinstance(err, RespError) else err.transient):
                raise
            # A shard failing over, loading, out of reach: the same buckets are merged at the next tick.
            log.warning("offenders not merged, retrying next tick", error=str(err))

    async def _merge(self, snap: Mapping[str, Any]) -> None:
        if self.fast is None:
            self.fast = await open_fast_client(self.settings)
        positions = {u["partition"]: u["last_delivered_id"] for u in snap["stages"]["aggregator"]["units"]}
        if self.positions is None:
            now = snap["server_time_ms"]
            lookback = self.settings.series_retention_ms or DEFAULT_LOOKBACK_MS
            window: tuple[int, int] | None = (now - lookback, now + self.settings.max_future_ms)
        else:
            window = await counted_arrivals(self.fast, self.settings, self.positions, positions)
        if window is not None:
            changed = await merge_offenders(self.fast, self.settings, snap["partitions"], *window,
                                            skip_empty_hours=self.positions is None)
            log.debug("offenders merged", changed=changed, since=window[0], until=window[1])
        self.positions = positions

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
