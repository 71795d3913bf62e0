"""Which master of a local cluster serves which slots: the partitions evenly, the keys outside
them with the fewest partitions, the other slots in equal ranges as ``redis-cli`` would."""

from __future__ import annotations

from collections.abc import Iterable

from redis.crc import key_slot

from agents.pipeline import PIPELINE
from pipeline.core.keys import Keys

SLOTS = 16384


def unpartitioned_keys(namespace: str) -> list[str]:
    """The keys no partition's tag places: the ingest stream, the config, the blacklist's list, the
    stages' member sets and the unpartitioned stages' leases (the router's)."""
    keys = Keys(namespace)
    return [keys.raw, keys.config, keys.blacklist_members, *(keys.members(stage.name) for stage in PIPELINE),
            *(keys.lease(stage.name) for stage in PIPELINE if not stage.partitioned)]


def partition_slots(partitions: int, shards: int, unpartitioned: Iterable[str] = ()) -> list[list[int]]:
    """The slots each master serves so that it holds an even share of the partitions: partition
    ``p``'s keys carry the hash tag ``{p}``, so its slot is the CRC16 of ``p``; the partitions go to
    the masters in turn (shares differ by at most one; two tags in one slot go together). The
    slots of the ``unpartitioned`` keys go to a master with the fewest partitions (with the
    router, ``clicks:raw`` is the heaviest key there is: on a master with more partitions it made
    that one do over 40 % of 3 masters' work), and every other slot to the master whose equal range
    it falls in, as ``redis-cli`` would place it."""
    owner: dict[int, int] = {}
    held = [0] * shards
    for partition in range(partitions):
        slot = key_slot(str(partition).encode())
        if slot not in owner:
            owner[slot] = min(range(shards), key=lambda shard: held[shard])
        held[owner[slot]] += 1
    lightest = min(range(shards), key=lambda shard: held[shard])
    for key in unpartitioned:
        owner.setdefault(key_slot(key.encode()), lightest)
    slots: list[list[int]] = [[] for _ in range(shards)]
    for slot in range(SLOTS):
        slots[owner.get(slot, slot * shards // SLOTS)].append(slot)
    return slots


def slot_ranges(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted slots as (first, last) runs, for ``CLUSTER ADDSLOTSRANGE``."""
    ranges: list[tuple[int, int]] = []
    for slot in slots:
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges
