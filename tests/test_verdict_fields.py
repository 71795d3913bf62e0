"""FRAUD_VERDICT_FIELDS: a verdict entry that copies only some of the click's fields changes no
verdict, count or offender, holds exactly what the README says, and hostile entries still get
their documented outcome."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from agents.generator import TrafficMix, blacklisted_ips, traffic
from pipeline.core.keys import Keys
from pipeline.core.settings import VERDICT_REQUIRED_FIELDS, Settings, SettingsError
from tests.accounting import check_exactly_once
from tests.arrival import xadd_arrived
from tests.helpers import list_ips, run_pipeline, series_totals, verdicts_by_raw_id
from tests.outputs import read_partitions
from tests.rule_model import RuleModel
from tests.test_fuzz import LISTED, arrived_entries, outcome_of

MINIMAL = "campaign"
ALWAYS = {b"verdict", b"raw_id", *(name.encode() for name in VERDICT_REQUIRED_FIELDS)}


def offender_buckets(client: redis.Redis, settings: Settings) -> dict[bytes, list[tuple[bytes, float]]]:
    """Every partition's offender bucket, by its name without the namespace, with its members and counts."""
    out: dict[bytes, list[tuple[bytes, float]]] = {}
    for part in Keys(settings.namespace).partitions(settings.partitions):
        for key in client.scan_iter(match=part.offenders_prefix + "*", count=1_000):
            out[key.removeprefix(settings.namespace.encode())] = client.zrange(key, 0, -1, withscores=True)
    return out


def verdict_fields(client: redis.Redis, settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    """raw id -> its verdict entry's fields."""
    return {fields[b"raw_id"]: fields for _, flat in read_partitions(client, settings, "verdicts")
            for fields in [dict(zip(flat[::2], flat[1::2], strict=True))]}


async def judged(settings: Settings, clicks: list[list[str]], arrival: int) -> dict[str, Any]:
    """The clicks through the whole pipeline in the settings' namespace, all arriving at ``arrival``:
    what it made of them."""
    await list_ips(settings, blacklisted_ips())
    ids = xadd_arrived(settings, [(arrival, fields) for fields in clicks])
    await run_pipeline(settings)
    check_exactly_once(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        return {"ids": ids, "verdicts": verdicts_by_raw_id(settings), "series": series_totals(settings),
                "offenders": offender_buckets(client, settings), "entries": verdict_fields(client, settings),
                "dead": sorted(fields[b"reason"] for _, flat in read_partitions(client, settings, "dead")
                               for fields in [dict(zip(flat[::2], flat[1::2], strict=True))])}


async def test_a_minimal_list_gives_the_same_verdicts_counts_and_offenders_as_all(settings: Settings) -> None:
    # Event times of the last minutes: an offender bucket expires a series retention after its end.
    arrival = int(time.time() * 1000)
    ticks = iter(range(arrival - 200_000, arrival, 37))
    trace = traffic(11, lambda: next(ticks), TrafficMix(humans=200, travellers=20))
    clicks = [next(trace)[0] for _ in range(4_000)]
    every = await judged(replace(settings, namespace="every"), clicks, arrival)
    minimal = await judged(replace(settings, namespace="minimal", verdict_fields=MINIMAL), clicks, arrival)

    assert every["ids"] == minimal["ids"]
    assert minimal["verdicts"] == every["verdicts"]
    assert len(set(every["verdicts"].values())) == 5, "the traffic should bring every verdict"
    assert minimal["series"] == every["series"]
    assert minimal["offenders"] == every["offenders"] != {}
    assert minimal["dead"] == every["dead"] != []
    # Exactly verdict, raw_id, the required fields and the listed one (when the click has it), with
    # the values the `all` entry has; the rest stays in the click's own entry.
    copied = ALWAYS | {MINIMAL.encode()}
    for raw_id, entry in minimal["entries"].items():
        full = every["entries"][raw_id]
        assert set(entry) == copied & set(full), entry
        assert entry == {name: full[name] for name in entry}
    assert any(len(full) > len(copied) for full in every["entries"].values())


async def test_a_listed_entry_carries_the_canonical_ip_and_ts_and_only_the_listed_fields(settings: Settings) -> None:
    settings = replace(settings, verdict_fields="campaign,referrer")
    arrival = 1_700_000_000_000
    click = ["device_id", "dev-1", "ip", "::FFFF:192.0.2.7", "ts", f"000{arrival - 5}", "transaction_id", "t-1",
             "lat", "48.8566", "lon", "2.3522", "campaign", "c7", "colour", "blue"]
    [raw_id] = xadd_arrived(settings, [(arrival, click)])
    await run_pipeline(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        [(_, flat)] = read_partitions(client, settings, "verdicts")
    # In this order: what the aggregator reads first, then the listed field the click has.
    assert flat == [b"verdict", b"clean", b"raw_id", raw_id.encode(), b"device_id", b"dev-1", b"ip", b"192.0.2.7",
                    b"ts", str(arrival - 5).encode(), b"campaign", b"c7"]


@hsettings(max_examples=int(os.environ.get("VERDICT_FIELDS_EXAMPLES", "60")), deadline=None,
           derandomize=bool(os.environ.get("CI")),
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large])
@given(entries=arrived_entries())
def test_hostile_entries_get_the_modelled_outcome_with_a_minimal_list(
        settings: Settings, entries: list[tuple[int, list[bytes]]]) -> None:
    settings = replace(settings, verdict_fields="ts")
    with redis.Redis.from_url(settings.redis_url) as client:
        client.flushall()
    asyncio.run(list_ips(settings, [LISTED]))
    ids = xadd_arrived(settings, entries)
    asyncio.run(run_pipeline(settings))

    out = check_exactly_once(settings, retries_may_expire=True)
    model = RuleModel(blacklist=frozenset({ipaddress.ip_address(LISTED)}))
    expected = [model.outcome(entry_id, flat) for entry_id, (_, flat) in zip(ids, entries, strict=True)]
    assert [outcome_of(out.verdicts, out.dead, entry_id.encode()) for entry_id in ids] == expected
    for fields in out.verdicts.values():
        assert set(fields) == ALWAYS, fields


def test_verdict_fields_default_to_all_and_read_as_a_list() -> None:
    assert Settings.from_env({}).verdict_extra_fields is None
    assert Settings.from_env({"FRAUD_VERDICT_FIELDS": " all "}).verdict_extra_fields is None
    settings = Settings.from_env({"FRAUD_VERDICT_FIELDS": "campaign, ts,ip, lat,campaign"})
    # The required ones are copied anyway; each listed one once, in the list's order.
    assert settings.verdict_extra_fields == ("campaign", "lat")
    assert Settings.from_env({"FRAUD_VERDICT_FIELDS": "device_id"}).verdict_extra_fields == ()


@pytest.mark.parametrize(("value", "message"), [
    ("campaign,,lat", "must be all or a comma-separated list of field names"),
    (" , ", "must be all or a comma-separated list"),
    ("all,campaign", "cannot list all"),
    ("campaign,verdict", "cannot list verdict"),
    ("raw_id", "cannot list raw_id"),
    ("x" * 1_025, "at most FRAUD_MAX_FIELD_BYTES"),
])
def test_verdict_fields_refuse_what_no_click_field_can_be(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"FRAUD_VERDICT_FIELDS": value})
