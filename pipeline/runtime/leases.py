"""Who owns which partition: members, leases, and a sticky rebalance (Kafka's group membership).

Each member of a stage heartbeats into the stage's member set and renews the leases it holds;
both run out after ``FRAUD_LEASE_MS`` without a heartbeat. From the live members (sorted by name,
the same list for everyone) each member works out its own share: P // n partitions, one more for
the first P % n members. A member above its share releases the excess; one below it takes free
or run-out partitions, those it would own in a round robin first. Partitions move only to even
the load (sticky); a member that dies has its partitions taken over within about a lease.

A lease carries an epoch, raised at every acquisition: the partition steps apply a batch only
for the owner at its current epoch, so a stalled former owner can apply nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.client.resp import RespClient, all_replies
from pipeline.core.keys import Keys
from pipeline.core.settings import Settings
from pipeline.runtime.stage import Stage
from pipeline.runtime.steps import LEASE, MEMBER


def fair_share(units: int, members: list[str], me: str) -> int:
    """How many of `units` partitions member `me` should own among `members`."""
    ranked = sorted(members)
    if me not in ranked:
        ranked = sorted([*ranked, me])
    place = ranked.index(me)
    return units // len(ranked) + (1 if place < units % len(ranked) else 0)


def preference(units: list[int], members: list[str], me: str) -> list[int]:
    """The order `me` tries to take partitions in: its round-robin ones first, so that members
    starting together split the partitions without contending for the same ones."""
    ranked = sorted({*members, me})
    place, n = ranked.index(me), len(ranked)
    return sorted(units, key=lambda u: (u % n != place, u))


@dataclass
class Changes:
    gained: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)


class Assignment:
    """This member's leases on a stage's partitions, kept by heartbeats."""

    def __init__(self, client: RespClient, stage: Stage, keys: Keys, settings: Settings, member: str,
                 greedy: bool = False) -> None:
        self.client = client
        # A one-off run (burst) takes every partition nobody holds and stays out of the member set,
        # so that it neither ends with unheld partitions unread nor makes live members shed theirs.
        self.greedy = greedy
        self.stage = stage
        self.keys = keys
        self.member = member
        self.ttl_ms = settings.lease_ms
        self.units = stage.units(settings)
        # partition -> the epoch this member holds it at
        self.owned: dict[int, int] = {}

    async def _lease(self, action: str, unit: int, epoch: int = 0) -> int:
        reply = await self.client.execute(*self._lease_argv(action, unit, epoch))
        return int(reply[0])

    def _lease_argv(self, action: str, unit: int, epoch: int) -> list[object]:
        return LEASE.argv({"lease": self.stage.lease_key(self.keys, unit)},
                          {"action": action, "owner": self.member, "epoch": epoch, "ttl_ms": self.ttl_ms})

    async def members(self, action: str = "join") -> list[str]:
        reply = await self.client.execute(*MEMBER.argv(
            {"members": self.keys.members(self.stage.name)},
            {"action": action, "name": self.member, "ttl_ms": self.ttl_ms}))
        return [m.decode() for m in reply]

    async def heartbeat(self) -> Changes:
        """Renew, then even out: release the excess or take free partitions up to the fair share."""
        changes = Changes()
        live = [self.member] if self.greedy else await self.members()
        if self.owned:
            held = list(self.owned.items())
            replies = all_replies(await self.client.pipeline([self._lease_argv("renew", u, e) for u, e in held]))
            for (unit, _), reply in zip(held, replies, strict=True):
                if int(reply[0]) == 0:
                    del self.owned[unit]
                    changes.lost.append(unit)
        share = len(self.units) if self.greedy else fair_share(len(self.units), live, self.member)
        while len(self.owned) > share:
            unit = max(self.owned)
            await self._lease("release", unit, self.owned.pop(unit))
            changes.lost.append(unit)
        for unit in preference(self.units, live, self.member):
            if len(self.owned) >= share:
                break
            if unit in self.owned:
                continue
            epoch = await self._lease("acquire", unit)
            if epoch:
                self.owned[unit] = epoch
                changes.gained.append(unit)
        return changes

    async def still_mine(self, unit: int) -> bool:
        """Renew one lease; False (and forgotten) when another member holds it now."""
        epoch = self.owned.get(unit)
        if epoch is not None and await self._lease("renew", unit, epoch):
            return True
        self.owned.pop(unit, None)
        return False

    def forget(self) -> None:
        """After a lost connection: hold nothing until the next heartbeat takes leases afresh."""
        self.owned.clear()

    async def leave(self) -> None:
        """Release every lease and leave the member set: the others take over at once."""
        for unit, epoch in list(self.owned.items()):
            await self._lease("release", unit, epoch)
        self.owned.clear()
        if not self.greedy:
            await self.members("leave")
