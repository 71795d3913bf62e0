from collections import Counter

from pipeline.core.keys import VERDICTS
from pipeline.core.settings import Settings
from tests.arrival import xadd_arrived
from tests.helpers import run_pipeline, series_totals, verdicts_by_raw_id


async def test_clicks_flow_to_verdicts_and_counts(settings: Settings) -> None:
    ids = xadd_arrived(settings, [(1_000_000, ["device_id", f"d{i % 3}", "ip", "10.0.0.1", "ts", str(1_000_000 + i)])
                                  for i in range(9)])
    await run_pipeline(settings)
    verdicts = verdicts_by_raw_id(settings)
    assert set(verdicts) == set(ids)
    assert series_totals(settings) == {**dict.fromkeys(VERDICTS, 0),
                                       **Counter(verdicts.values())}
