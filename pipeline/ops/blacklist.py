"""``fraud blacklist``: the IP blacklist the detector checks.

The detector reads a Cuckoo filter (fast, compact, may answer "listed" for an
address never added, at a small configured rate). A Cuckoo filter can only
safely delete what was really inserted, so a set of the listed addresses is
kept beside it as the source of truth: an address is added to or removed from
the filter only when the set says it is new or really present, in one atomic
script, so the two never disagree.

Each partition has its own filter and set (its detector step reads the filter in the partition's
slot); a change is applied to every partition's copy, each copy atomically, then to the
namespace's set of listed addresses, which is what ``fraud blacklist`` lists and checks against.
A click is judged against one copy, whole before or whole after a change of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as aioredis

from agents.blacklist import ensure_filter
from pipeline.core.errors import FraudError
from pipeline.core.keys import Keys, PartitionKeys
from pipeline.core.settings import Settings
from schemas.click import InvalidClick, canonical_ip


def _in_step_script(set_command: str, filter_command: str) -> str:
    """A script that changes the filter only for addresses the set says really changed."""
    return f"""
local changed = 0
for _, ip in ipairs(ARGV) do
  if redis.call('{set_command}', KEYS[2], ip) == 1 then
    redis.call('{filter_command}', KEYS[1], ip)
    changed = changed + 1
  end
end
return changed
"""


ADD_SCRIPT = _in_step_script("SADD", "CF.ADD")
REMOVE_SCRIPT = _in_step_script("SREM", "CF.DEL")

BATCH = 1000


def canonical_ips(texts: Iterable[str]) -> list[str]:
    """Canonical spellings; the first invalid address fails the whole command."""
    out = []
    for text in texts:
        try:
            out.append(canonical_ip(text.strip()))
        except InvalidClick:
            raise FraudError(f"not an IPv4 or IPv6 address: {text!r}") from None
    return out


async def _run_script(client: aioredis.Redis, copy: PartitionKeys, script: str, ips: list[str]) -> int:
    total = 0
    for first in range(0, len(ips), BATCH):
        total += int(await client.eval(script, 2, copy.blacklist, copy.blacklist_members,
                                       *ips[first:first + BATCH]))
    return total


async def add_ips(client: aioredis.Redis, keys: Keys, settings: Settings, ips: list[str]) -> int:
    """Add to every partition's copy, then to the list; returns how many addresses were new."""
    canonical = canonical_ips(ips)
    for copy in keys.partitions(settings.partitions):
        await ensure_filter(client.execute_command, copy, settings)
        await _run_script(client, copy, ADD_SCRIPT, canonical)
    return int(await client.sadd(keys.blacklist_members, *canonical)) if canonical else 0


async def remove_ips(client: aioredis.Redis, keys: Keys, settings: Settings, ips: list[str]) -> int:
    """Remove from every partition's copy, then from the list; returns how many were listed."""
    canonical = canonical_ips(ips)
    for copy in keys.partitions(settings.partitions):
        await _run_script(client, copy, REMOVE_SCRIPT, canonical)
    return int(await client.srem(keys.blacklist_members, *canonical)) if canonical else 0


async def check_ips(client: aioredis.Redis, keys: Keys, settings: Settings,
                    ips: list[str]) -> list[tuple[str, bool, bool]]:
    """(ip, listed in the set, what the detectors' filters answer: listed in every copy) per address."""
    canonical = canonical_ips(ips)
    if not canonical:
        return []
    in_filter = [True] * len(canonical)
    for copy in keys.partitions(settings.partitions):
        answers = [0] * len(canonical)
        if await client.exists(copy.blacklist):
            answers = await client.execute_command("CF.MEXISTS", copy.blacklist, *canonical)
        in_filter = [was and bool(now) for was, now in zip(in_filter, answers, strict=True)]
    in_set = await client.smismember(keys.blacklist_members, canonical)
    return list(zip(canonical, [bool(x) for x in in_set], in_filter, strict=True))


def read_ip_file(path: Path) -> tuple[list[str], list[str]]:
    """Addresses of a file (one a line, # comments), and one message per bad line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise FraudError(f"cannot read {path}: {err.strerror}") from None
    good: list[str] = []
    bad: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            good.append(canonical_ip(text))
        except InvalidClick:
            bad.append(f"{path}:{number}: not an IPv4 or IPv6 address: {text[:64]!r}")
    return good, bad
