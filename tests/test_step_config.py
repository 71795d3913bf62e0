"""A step's settings travel packed in one parameter (`config`), which the Lua side parses once per
distinct text and keeps: the packing is checked, and kept settings never leak between deployments."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from agents.detector import DETECT, Detector
from pipeline.client.step import CONFIG, Step
from pipeline.core.settings import Settings
from tests.arrival import xadd_arrived
from tests.helpers import run_pipeline, verdicts_by_raw_id

T0 = 1_700_000_000_000


def test_config_is_one_parameter_of_name_value_lines() -> None:
    step = Step("fraud_x", keys=("k",), params=("a",), config=("b", "c"))
    text = step.pack_config({"c": "x,y", "b": 5})
    assert text == "b=5\nc=x,y"
    argv = step.argv({"k": "key"}, {"a": 1}, config=text)
    assert argv == ["FCALL", "fraud_x", 1, "key", 1, "k", 2, "a", CONFIG, 1, text, 0]


def test_config_must_match_its_declaration() -> None:
    step = Step("fraud_x", keys=(), config=("b",))
    with pytest.raises(ValueError, match="line break"):
        step.pack_config({"b": "one\ntwo"})
    with pytest.raises(ValueError, match="differ"):
        step.pack_config({"b": 1, "extra": 2})
    with pytest.raises(ValueError, match="config"):
        step.argv({})
    with pytest.raises(ValueError, match="config"):
        Step("fraud_y", keys=()).argv({}, config="b=1")
    with pytest.raises(ValueError, match="config"):
        Step("fraud_z", keys=(), params=(CONFIG,))
    with pytest.raises(ValueError, match="also in its config"):
        Step("fraud_z", keys=(), params=("b",), config=("b",))
    with pytest.raises(ValueError, match="line break"):
        Step("fraud_z", keys=(), config=("a=b",))


async def spam_verdicts(settings: Settings, device: str) -> list[str | None]:
    """Three clicks of one device within the window, judged: their verdicts in order."""
    ids = xadd_arrived(settings, [(T0 + 1_000, ["device_id", device, "ip", "192.0.2.1", "ts", str(T0 + n)])
                                  for n in range(3)])
    await run_pipeline(settings)
    verdicts = verdicts_by_raw_id(settings)
    return [verdicts.get(i) for i in ids]


async def test_deployments_with_other_settings_on_one_server_keep_their_own(settings: Settings) -> None:
    # Two namespaces on one server whose detectors differ in one setting, taking turns: each
    # step reads the settings of its own config text, never those kept for the other's.
    strict = replace(settings, namespace=settings.namespace + "-strict", click_spam_threshold=1)
    lenient = replace(settings, namespace=settings.namespace + "-lenient", click_spam_threshold=3)
    for turn in range(2):
        assert await spam_verdicts(strict, f"s{turn}") == ["clean", "click_spam", "click_spam"]
        assert await spam_verdicts(lenient, f"l{turn}") == ["clean", "clean", "clean"]
        assert await spam_verdicts(settings, f"d{turn}") == ["clean", "clean", "click_spam"]


async def test_more_configs_than_are_kept_are_each_read_afresh(settings: Settings) -> None:
    # Each distinct text is parsed on its own: well past the number kept (the cache starts afresh
    # when full), a config naming a verdict without a rule is refused for that very name.
    client = redis.Redis.from_url(settings.redis_url)
    config = Detector(settings).config
    for n in range(100):
        other = config.replace("verdicts=clean,", f"verdicts=clean,nothing{n},", 1)
        argv = DETECT.argv({name: f"{{p}}:{name}" for name in DETECT.keys},
                           {name: "x" for name in DETECT.params}, {"clicks": [], "rejects": []}, other)
        with pytest.raises(redis.ResponseError, match=f"no rule for the verdict nothing{n}$"):
            client.execute_command(*argv)
    client.close()
    # And the deployment's own config still judges as it should.
    assert await spam_verdicts(settings, "after") == ["clean", "clean", "click_spam"]
