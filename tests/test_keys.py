"""Key names: the documented streams by default, one cluster slot with a hash tag."""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from pipeline.core.keys import VERDICTS, Keys
from pipeline.core.settings import Settings, SettingsError


def every_key(keys: Keys) -> list[str]:
    names = [getattr(keys, name) for name, value in inspect.getmembers(Keys)
             if isinstance(value, property)]
    names += [keys.window("device-1"), keys.window("device-2")]
    names += [keys.series(v) for v in VERDICTS] + [keys.rollup(v) for v in VERDICTS]
    names += [keys.health_series("lag", "detector")]
    return names


def test_default_stream_names_are_the_documented_ones() -> None:
    keys = Keys()
    assert (keys.raw, keys.verdicts, keys.dead) == ("clicks:raw", "clicks:verdicts", "clicks:dead")


def test_with_a_hash_tag_every_key_lands_in_one_slot() -> None:
    keys = Keys("{clicks}")
    slots = {key_slot(name.encode()) for name in every_key(keys)}
    assert len(slots) == 1
    replay = keys.replay("what-if")
    assert {key_slot(name.encode()) for name in every_key(replay)} == slots


def test_without_a_hash_tag_keys_spread() -> None:
    # The check above could not fail if key_slot ignored names: here it must see them differ.
    assert len({key_slot(name.encode()) for name in every_key(Keys())}) > 1


def test_settings_from_environment() -> None:
    settings = Settings.from_env({"FRAUD_CLICK_SPAM_THRESHOLD": "5", "FRAUD_NAMESPACE": "{c}",
                                  "FRAUD_REDIS_URL": "redis://h:1"})
    assert (settings.click_spam_threshold, settings.namespace, settings.redis_url) == (5, "{c}", "redis://h:1")


@pytest.mark.parametrize(("env", "message"), [
    ({"FRAUD_BATCH_SIZE": "0"}, "FRAUD_BATCH_SIZE must be positive"),
    ({"FRAUD_DEDUP_HORIZON_MS": "5"}, "FRAUD_DEDUP_HORIZON_MS must be at least"),
    ({"FRAUD_APPENDFSYNC": "sometimes"}, "FRAUD_APPENDFSYNC must be one of"),
])
def test_settings_refuse_unusable_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
