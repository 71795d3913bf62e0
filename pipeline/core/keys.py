"""Every Redis key name the pipeline uses, and nothing else.

All names start with one namespace. The ingest stream is the documented ``clicks:raw``; the rest
of the pipeline lives in P partitions, and every key of partition p carries the hash tag ``{p}``
(``clicks:{3}:in``, ``clicks:{3}:verdicts``, ``clicks:{3}:window:<device>``...): a partition's
atomic steps touch one Redis Cluster slot, and partitions spread over the cluster's shards.
The namespace itself holds no braces, so that the partition's tag is the key's first one.
"""

from __future__ import annotations

from dataclasses import dataclass

# The verdicts, in their order of precedence: the first is a click's when no rule matches; the
# others are the rules, tried in this order (README, "Rules"). Series, status, the live view and
# the dashboard's panels are all derived from this list.
VERDICTS: tuple[str, ...] = ("clean", "ip_blacklist", "click_spam", "impossible_travel", "robotic")

# Prefix of per-device window keys, relative to a partition; the server-side
# detector step builds ``<partition prefix>window:<device_id>`` itself.
WINDOW_INFIX = "window"
# Prefix of per-device trail keys (a hash: the device's recent click times and its last position),
# built by the server-side detector step the same way.
TRAIL_INFIX = "trail"

# The offender buckets: ``<partition prefix>offenders:<dimension>:<verdict>:<span_ms>:<start_ms>``, one
# sorted set of the heaviest members of one dimension (device_id, ip) for one flagged verdict in
# one event-time bucket; the aggregator's step writes them and the dashboard's read merges them.
OFFENDER_DIMENSIONS: tuple[str, ...] = ("device_id", "ip")


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition: its streams, its state, its lease and offsets' audit."""

    namespace: str
    number: int

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:{{{self.number}}}:"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def input(self) -> str:
        """The partition's clicks: routed from ``clicks:raw``, or written here by a producer."""
        return self._key("in")

    @property
    def verdicts(self) -> str:
        return self._key("verdicts")

    @property
    def dead(self) -> str:
        return self._key("dead")

    @property
    def blacklist(self) -> str:
        """The partition's copy of the blacklist filter (its step reads it in its own slot)."""
        return self._key("blacklist")

    @property
    def blacklist_members(self) -> str:
        """Set of the addresses in this copy: the truth its filter is kept in step with."""
        return self._key("blacklist", "members")

    @property
    def window_prefix(self) -> str:
        return self._key(WINDOW_INFIX, "")

    def window(self, device_id: str) -> str:
        return self.window_prefix + device_id

    @property
    def trail_prefix(self) -> str:
        return self._key(TRAIL_INFIX, "")

    def trail(self, device_id: str) -> str:
        """Hash of what the robotic and impossible_travel rules remember of a device: ``beats`` (the ts of
        its last clicks, arrival order) and ``lat``, ``lon``, ``at`` (its last positioned click)."""
        return self.trail_prefix + device_id

    @property
    def window_index(self) -> str:
        """Sorted set of device -> an upper bound of the newest ts in its window: which windows
        can go, found without the wall clock (outside the window prefix)."""
        return self._key("windows")

    @property
    def rejected(self) -> str:
        """Sorted set of the entry ids the detector dead-lettered lately (score: arrival ms), so that
        an entry re-delivered by a group reset gets no second dead letter within the horizon."""
        return self._key("rejected")

    @property
    def routed(self) -> str:
        """The last ``clicks:raw`` id the router copied here: re-routing after a crash skips to it."""
        return self._key("routed")

    @property
    def stats(self) -> str:
        """Hash of running counters per stage (``detector.clean``, ``router.dead``...)."""
        return self._key("stats")

    def lease(self, stage: str) -> str:
        """Hash (owner, epoch, until): which member of the stage owns the partition, since when."""
        return self._key("lease", stage)

    def commits(self, stage: str) -> str:
        """Stream of the stage's applied batches (owner, epoch, first and last id): the audit of fencing."""
        return self._key("commits", stage)

    def series(self, verdict: str) -> str:
        return self._key("series", verdict)

    def rollup(self, verdict: str) -> str:
        return self._key("series", verdict, "rollup")

    @property
    def offenders_prefix(self) -> str:
        return self._key("offenders", "")

    def offenders(self, dimension: str, verdict: str, span_ms: int, start_ms: int) -> str:
        return f"{self.offenders_prefix}{dimension}:{verdict}:{span_ms}:{start_ms}"


@dataclass(frozen=True)
class Keys:
    namespace: str = "clicks"

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @property
    def raw(self) -> str:
        return self._key("raw")

    @property
    def config(self) -> str:
        """Hash of what every agent and producer must agree on (the number of partitions)."""
        return self._key("config")

    @property
    def blacklist_members(self) -> str:
        """Set of the listed addresses: the list every partition's copy is kept equal to."""
        return self._key("blacklist", "members")

    def partition(self, number: int) -> PartitionKeys:
        return PartitionKeys(self.namespace, number)

    def partitions(self, count: int) -> list[PartitionKeys]:
        return [self.partition(p) for p in range(count)]

    def members(self, stage: str) -> str:
        """Sorted set of a stage's live members (score: when their heartbeat runs out)."""
        return self._key("members", stage)

    def lease(self, stage: str) -> str:
        """The lease of an unpartitioned stage (the router, over ``clicks:raw``)."""
        return self._key("lease", stage)

    def series_labels(self) -> tuple[str, str]:
        """The label pair every series of this namespace carries. Labels are global to the server
        (``TS.QUERYINDEX``/``TS.MRANGE`` filters see every key prefix), so a filter names the
        namespace to see only its own series, and not a replay's or another pipeline's.
        A method, not a property: the properties of Keys are key names."""
        return ("namespace", self.namespace)

    @property
    def merged_offenders_prefix(self) -> str:
        """Every partition's offender buckets summed, under one hash tag (the monitor keeps them,
        ``pipeline/ops/offenders.py``): a read of one key prefix, which Redis Cluster allows where a
        read of every partition's buckets in one call is refused (CROSSSLOT). Same layout after it."""
        return self._key("{offenders}", "offenders", "")

    def merged_offenders(self, dimension: str, verdict: str, span_ms: int, start_ms: int) -> str:
        """One merged bucket: the layout of ``PartitionKeys.offenders`` after the merged prefix."""
        return f"{self.merged_offenders_prefix}{dimension}:{verdict}:{span_ms}:{start_ms}"

    def health_series(self, metric: str, subject: str) -> str:
        return self._key("health", metric, subject)

    def replay(self, name: str) -> Keys:
        """A separate key space for what-if re-processing, beside the live one."""
        return Keys(f"{self.namespace}:replay:{name}")
