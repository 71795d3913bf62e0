"""Every Redis key name the pipeline uses, and nothing else.

All names start with one namespace. With the default ``clicks`` the streams are
the documented ``clicks:raw``, ``clicks:verdicts`` and ``clicks:dead``. With a
hash tag as namespace (``{clicks}``) every key hashes to the same cluster slot,
which the atomic server-side steps need on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

VERDICTS: tuple[str, ...] = ("clean", "ip_blacklist", "click_spam")

# Prefix of per-device window keys, relative to the namespace; the server-side
# detector step builds ``<namespace>:window:<device_id>`` itself.
WINDOW_INFIX = "window"

# The offender buckets: ``<namespace>:offenders:<dimension>:<verdict>:<span_ms>:<start_ms>``, one
# sorted set of the heaviest members of one dimension (device_id, ip) for one flagged verdict in
# one event-time bucket; the aggregator's step writes them and the dashboard's read builds them.
OFFENDER_DIMENSIONS: tuple[str, ...] = ("device_id", "ip")


@dataclass(frozen=True)
class Keys:
    namespace: str = "clicks"

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @property
    def raw(self) -> str:
        return self._key("raw")

    @property
    def verdicts(self) -> str:
        return self._key("verdicts")

    @property
    def dead(self) -> str:
        return self._key("dead")

    @property
    def blacklist(self) -> str:
        return self._key("blacklist")

    @property
    def blacklist_members(self) -> str:
        """Set of the listed addresses: the truth the filter is kept in step with."""
        return self._key("blacklist", "members")

    @property
    def window_prefix(self) -> str:
        return self._key(WINDOW_INFIX, "")

    def window(self, device_id: str) -> str:
        return self.window_prefix + device_id

    @property
    def window_index(self) -> str:
        """Sorted set of device -> an upper bound of the newest ts in its window: which windows
        can go, found without the wall clock (``<namespace>:windows``, outside the window prefix)."""
        return self._key("windows")

    @property
    def stats(self) -> str:
        """Hash of running counters per stage (processed, duplicates, dead...)."""
        return self._key("stats")

    def series(self, verdict: str) -> str:
        return self._key("series", verdict)

    def rollup(self, verdict: str) -> str:
        return self._key("series", verdict, "rollup")

    @property
    def offenders_prefix(self) -> str:
        return self._key("offenders", "")

    def offenders(self, dimension: str, verdict: str, span_ms: int, start_ms: int) -> str:
        return f"{self.offenders_prefix}{dimension}:{verdict}:{span_ms}:{start_ms}"

    def series_labels(self) -> tuple[str, str]:
        """The label pair every series of this namespace carries. Labels are global to the server
        (``TS.QUERYINDEX``/``TS.MRANGE`` filters see every key prefix), so a filter names the
        namespace to see only its own series, and not a replay's or another pipeline's.
        A method, not a property: the properties of Keys are key names."""
        return ("namespace", self.namespace)

    def health_series(self, metric: str, subject: str) -> str:
        return self._key("health", metric, subject)

    def replay(self, name: str) -> Keys:
        """A separate key space for what-if re-processing, beside the live one."""
        return Keys(f"{self.namespace}:replay:{name}")
