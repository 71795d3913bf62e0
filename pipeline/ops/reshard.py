"""Move one slot (a partition's keys) to another master while the pipeline runs.

``redis-cli --cluster reshard`` moves a slot's keys a few at a time, and meanwhile the source
answers for the slot with some keys gone: a Redis Function that then touches a key it did not
declare (a device's window, an offender bucket) and that has left fails half-way, its earlier
writes kept. Here the source gives the slot up in one ``MULTI``: ``MIGRATING``, every key of the
slot moved by one ``MIGRATE`` (run inside a script, which reads the slot's keys at that instant),
then ``NODE <target>``; no command of another client runs in between, so every step runs on the
source with all its keys or, after a ``MOVED``, on the target with all of them. The target,
``IMPORTING`` beforehand, takes the slot with ``NODE`` at once after (the agents' client rereads
the slot map on ``MOVED`` and retries until the nodes agree).
"""

from __future__ import annotations

import redis

# Reads every key of the slot as it is now and moves them in one MIGRATE (KEYS form: one round trip).
MOVE_KEYS = """
local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', ARGV[1], ARGV[5])
if #keys == 0 then return 0 end
redis.call('MIGRATE', ARGV[2], ARGV[3], '', 0, ARGV[4], 'KEYS', unpack(keys))
return #keys
"""
# Keys of one slot moved at most: a partition's keys number its devices' windows and trails plus a
# few dozen; the whole slot must go in one call, so the bound is generous.
MAX_KEYS = 10_000_000
MIGRATE_TIMEOUT_MS = 10_000


def node_id(node: redis.Redis) -> str:
    reply = node.execute_command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def move_slot(source: redis.Redis, target: redis.Redis, target_host: str, target_port: int, slot: int) -> int:
    """Move ``slot`` from the master ``source`` (which serves it) to the master ``target``; the keys moved."""
    source_id, target_id = node_id(source), node_id(target)
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    with source.pipeline(transaction=True) as handover:
        handover.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        handover.execute_command("EVAL", MOVE_KEYS, 0, slot, target_host, target_port, MIGRATE_TIMEOUT_MS, MAX_KEYS)
        handover.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        replies = handover.execute(raise_on_error=False)
    failed = [reply for reply in replies if isinstance(reply, Exception)]
    if failed:
        # Give the slot back whole: the source still holds every key (MIGRATE moves all or none).
        source.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        raise redis.RedisError(f"slot {slot} stayed on its master: {'; '.join(map(str, failed))}")
    target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return int(replies[1])
