"""Key names: the documented ingest stream, and one cluster slot per partition."""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from agents.pipeline import PIPELINE
from pipeline.core.keys import VERDICTS, Keys, PartitionKeys
from pipeline.core.partitions import partition_of
from pipeline.core.settings import Settings, SettingsError


def partition_keys(part: PartitionKeys) -> list[str]:
    """Every key of one partition (what its steps touch)."""
    names = [getattr(part, name) for name, value in inspect.getmembers(PartitionKeys)
             if isinstance(value, property) and name != "prefix"]
    names += [part.window("device-1"), part.window("device-2"), part.trail("device-1")]
    names += [part.series(v) for v in VERDICTS] + [part.rollup(v) for v in VERDICTS]
    names += [part.lease(s.name) for s in PIPELINE] + [part.commits(s.name) for s in PIPELINE]
    names += [part.offenders("ip", "click_spam", 60_000, 0)]
    return names


def test_the_ingest_stream_is_the_documented_one() -> None:
    keys = Keys()
    assert keys.raw == "clicks:raw"
    assert keys.partition(3).input == "clicks:{3}:in"
    assert (keys.partition(3).verdicts, keys.partition(3).dead) == ("clicks:{3}:verdicts", "clicks:{3}:dead")


@pytest.mark.parametrize("keys", [Keys(), Keys("fraud"), Keys().replay("what-if")])
def test_every_key_of_a_partition_lands_in_its_own_slot(keys: Keys) -> None:
    slots = []
    for part in keys.partitions(8):
        names = partition_keys(part)
        assert all(name.startswith(keys.namespace + ":") for name in names)
        found = {key_slot(name.encode()) for name in names}
        assert len(found) == 1, f"{part.prefix}: keys in slots {found}"
        slots += found
    # Partitions are spread: eight partitions, eight slots.
    assert len(set(slots)) == 8


def test_the_partition_function_matches_the_readme_vectors() -> None:
    vectors = {"": (0, 0, 0), "dev-1": (6, 6, 2), "dev-42": (6, 6, 0), "bot-7": (1, 9, 0),
               "ümlaut-gerät": (6, 14, 1)}
    for device, expected in vectors.items():
        assert tuple(partition_of(device, p) for p in (8, 16, 3)) == expected, device


def test_settings_from_environment() -> None:
    settings = Settings.from_env({"FRAUD_CLICK_SPAM_THRESHOLD": "5", "FRAUD_NAMESPACE": "c",
                                  "FRAUD_REDIS_URL": "redis://h:1", "FRAUD_PARTITIONS": "12"})
    assert (settings.click_spam_threshold, settings.namespace, settings.redis_url, settings.partitions) == (
        5, "c", "redis://h:1", 12)


@pytest.mark.parametrize(("env", "message"), [
    ({"FRAUD_BATCH_SIZE": "0"}, "FRAUD_BATCH_SIZE must be positive"),
    ({"FRAUD_DEDUP_HORIZON_MS": "5"}, "FRAUD_DEDUP_HORIZON_MS must be at least"),
    ({"FRAUD_APPENDFSYNC": "sometimes"}, "FRAUD_APPENDFSYNC must be one of"),
    ({"FRAUD_NAMESPACE": "{clicks}"}, "without braces"),
    ({"FRAUD_PARTITIONS": "0"}, "FRAUD_PARTITIONS must be positive"),
])
def test_settings_refuse_unusable_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
