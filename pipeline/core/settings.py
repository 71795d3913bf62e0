"""All tunables in one frozen object, read once from ``FRAUD_*`` environment variables."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.core.keys import OFFENDER_DIMENSIONS, VERDICTS


class SettingsError(ValueError):
    """A ``FRAUD_*`` variable holds a value the pipeline cannot use."""


def _default_consumer() -> str:
    # Unique per process so that a restarted agent never inherits a dead one's
    # identity by accident: the dead one's leases run out and are taken over instead.
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379"
    # TLS (a rediss:// URL): the CA that signed the server's certificate (empty: the system's),
    # and a client certificate and key for servers that ask for one. Host names are always checked.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Prefix of every key (no braces: each partition's keys carry a hash tag of their own).
    namespace: str = "clicks"
    home: Path = Path(".fraud")
    consumer: str = field(default_factory=_default_consumer)

    click_spam_threshold: int = 2
    click_spam_window_ms: int = 10_000
    # H: how far a click's ts may lie before its arrival (the ms part of its
    # entry id) and still be judged against an exact window; it also bounds how
    # long a (device_id, transaction_id) pair is remembered. At least the window.
    dedup_horizon_ms: int = 300_000
    # F: how far a click's ts may lie after its arrival (producers' clocks run
    # ahead). Clicks outside [arrival - H, arrival + F] are dead-lettered.
    max_future_ms: int = 60_000

    # The rules applied, by verdict name (any of ip_blacklist, click_spam, impossible_travel,
    # robotic; empty: none). Their order of precedence is fixed (keys.VERDICTS), not this list's.
    rules: str = "ip_blacklist,click_spam,impossible_travel,robotic"
    # robotic: the last K intervals between a device's clicks (event time, arrival order), judged
    # once there are at least the minimum; robotic when max - min < permille/1000 of their mean.
    # A previous click counts while its ts is within the lookback before the click's ts.
    robotic_intervals: int = 8
    robotic_min_intervals: int = 5
    robotic_spread_permille: int = 20
    robotic_lookback_ms: int = 600_000
    # impossible_travel: the device's previous positioned click is farther than the speed allows in
    # the time between them (and farther than the minimum distance, below which positions are noise).
    # That click counts while its ts is within the lookback before the click's ts.
    travel_max_kmh: int = 1_000
    travel_min_km: int = 100
    travel_lookback_ms: int = 3_600_000

    blacklist_capacity: int = 1_000_000
    blacklist_bucket_size: int = 2
    blacklist_max_iterations: int = 20
    blacklist_expansion: int = 1

    # P: clicks are split by device_id into this many partitions, each owned by one member of a
    # stage at a time. Every agent and producer must agree on it (it is recorded in Redis).
    partitions: int = 8
    # How long a member's lease on its partitions lasts without a heartbeat: a member that dies
    # has its partitions taken over within about this time (heartbeats run every third of it).
    lease_ms: int = 3_000
    # A batch begun this many times at one offset without being committed (its process died each
    # time) has its entries applied one at a time; one that kills this many processes alone is
    # dead-lettered (max_attempts), so that the partition moves on.
    max_attempts: int = 3
    batch_size: int = 500
    block_ms: int = 1_000
    # How long a stage lets entries gather when a read wakes it with a few (no batch full) before it
    # reads again: a small batch costs Redis several times more per entry than a full one, and a
    # blocked read wakes on the first entry to come. The detector's verdicts are waited on, so it
    # does not linger by default (Kafka's fetch.min.bytes=1): at 10k clicks/s of smooth traffic
    # 2 ms took p50 1 -> 4 ms and p99 6 -> 10 ms for -25 % of Redis's CPU per click (and at 20k/s p99
    # 18 -> 32 ms); behind a backlog batches fill up by themselves. The aggregator's counts are read
    # every few seconds. 0: never.
    detector_linger_ms: int = 0
    aggregator_linger_ms: int = 200
    maintenance_interval_ms: int = 5_000
    shutdown_timeout_ms: int = 10_000

    # Entries older than this are trimmed once every group has acknowledged them.
    stream_keep_ms: int = 3_600_000
    dead_keep_ms: int = 7 * 24 * 3_600_000
    max_field_count: int = 32
    max_field_bytes: int = 1_024

    bucket_ms: int = 1_000
    series_retention_ms: int = 7 * 24 * 3_600_000
    rollup_bucket_ms: int = 60_000
    rollup_retention_ms: int = 90 * 24 * 3_600_000
    # Members kept per offender bucket (a Space-Saving summary: see the aggregator).
    offenders_per_bucket: int = 100
    # The click fields a verdict entry copies: `all` (every field the click has), or a comma-separated
    # list of names. The pipeline's own readers' fields (VERDICT_REQUIRED_FIELDS) are always copied.
    verdict_fields: str = "all"

    appendfsync: str = "everysec"
    log_format: str = "auto"
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"FRAUD_{f.name.upper()}"
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "click_spam_threshold", "click_spam_window_ms", "dedup_horizon_ms", "blacklist_capacity",
            "batch_size", "max_attempts", "block_ms", "partitions", "lease_ms", "bucket_ms", "rollup_bucket_ms",
            "max_field_count", "max_field_bytes", "maintenance_interval_ms", "shutdown_timeout_ms",
            "offenders_per_bucket", "robotic_intervals", "robotic_min_intervals", "robotic_spread_permille",
            "robotic_lookback_ms", "travel_max_kmh", "travel_lookback_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"FRAUD_{name.upper()} must be positive, got {getattr(self, name)}")
        for name in ("detector_linger_ms", "aggregator_linger_ms"):
            if not 0 <= getattr(self, name) < self.lease_ms // 3:
                raise SettingsError(f"FRAUD_{name.upper()} must be at least 0 and below a third of FRAUD_LEASE_MS "
                                    f"(the heartbeat), got {getattr(self, name)}")
        if self.dedup_horizon_ms < self.click_spam_window_ms:
            raise SettingsError("FRAUD_DEDUP_HORIZON_MS must be at least FRAUD_CLICK_SPAM_WINDOW_MS")
        if self.max_future_ms < 0:
            raise SettingsError(f"FRAUD_MAX_FUTURE_MS must not be negative, got {self.max_future_ms}")
        self._validate_event_time_span()
        self._validate_rules()
        self._validate_verdict_fields()
        if self.rollup_bucket_ms % self.bucket_ms:
            raise SettingsError("FRAUD_ROLLUP_BUCKET_MS must be a multiple of FRAUD_BUCKET_MS")
        if self.appendfsync not in ("always", "everysec", "no"):
            raise SettingsError("FRAUD_APPENDFSYNC must be one of always, everysec, no")
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError("FRAUD_LOG_FORMAT must be one of auto, json, console")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("FRAUD_TLS_CERT_FILE and FRAUD_TLS_KEY_FILE go together")
        if not self.namespace or any(c.isspace() or c in "{}" for c in self.namespace):
            raise SettingsError("FRAUD_NAMESPACE must be a non-empty word without braces")
        if self.partitions > PARTITIONS_MAX:
            raise SettingsError(f"FRAUD_PARTITIONS must be at most {PARTITIONS_MAX}, got {self.partitions}")

    @property
    def rule_names(self) -> tuple[str, ...]:
        """The rules switched on, in their order of precedence."""
        chosen = {name.strip() for name in self.rules.split(",") if name.strip()}
        return tuple(v for v in VERDICTS[1:] if v in chosen)

    @property
    def history_ms(self) -> int:
        """How far before its arrival a click's rules can look back: H + the longest lookback of a
        rule switched on (a device's state older than that is never read again)."""
        on = self.rule_names
        lookbacks = (self.click_spam_window_ms,
                     self.robotic_lookback_ms if "robotic" in on else 0,
                     self.travel_lookback_ms if "impossible_travel" in on else 0)
        return self.dedup_horizon_ms + max(lookbacks)

    def _listed_verdict_fields(self) -> list[str] | None:
        """FRAUD_VERDICT_FIELDS as written, name by name; None for `all`."""
        if self.verdict_fields.strip() == "all":
            return None
        return [name.strip() for name in self.verdict_fields.split(",")]

    @property
    def verdict_extra_fields(self) -> tuple[str, ...] | None:
        """The listed fields a verdict entry copies besides the required ones, in the list's order
        (each once); None when it copies every field of the click (`all`)."""
        listed = self._listed_verdict_fields()
        if listed is None:
            return None
        return tuple(dict.fromkeys(n for n in listed if n not in VERDICT_REQUIRED_FIELDS))

    def _validate_verdict_fields(self) -> None:
        names = self._listed_verdict_fields()
        if names is None:
            return
        if not all(names):
            raise SettingsError("FRAUD_VERDICT_FIELDS must be all or a comma-separated list of field names, "
                                f"got {self.verdict_fields!r}")
        misplaced = [n for n in names if n in ("all", *VERDICT_ADDED_FIELDS) or len(n.encode()) > self.max_field_bytes]
        if misplaced:
            raise SettingsError(
                f"FRAUD_VERDICT_FIELDS cannot list {', '.join(misplaced)}: `all` stands alone, "
                f"{' and '.join(VERDICT_ADDED_FIELDS)} are always in a verdict entry, and a name is at most "
                f"FRAUD_MAX_FIELD_BYTES long")

    def _validate_rules(self) -> None:
        chosen = [name.strip() for name in self.rules.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in VERDICTS[1:]]
        if unknown:
            raise SettingsError(
                f"FRAUD_RULES names no rule {', '.join(unknown)}; the rules are {', '.join(VERDICTS[1:])}")
        if self.travel_min_km < 0:
            raise SettingsError(f"FRAUD_TRAVEL_MIN_KM must not be negative, got {self.travel_min_km}")
        if self.robotic_min_intervals > self.robotic_intervals:
            raise SettingsError("FRAUD_ROBOTIC_MIN_INTERVALS must be at most FRAUD_ROBOTIC_INTERVALS")
        if self.robotic_spread_permille > 1_000:
            raise SettingsError(
                f"FRAUD_ROBOTIC_SPREAD_PERMILLE must be at most 1000, got {self.robotic_spread_permille}")
        # Both rules compare integer products in the server's doubles: they stay exact below 2^53.
        interval_max = self.robotic_lookback_ms + self.dedup_horizon_ms + self.max_future_ms
        if 1_000 * self.robotic_intervals * interval_max >= EXACT_MAX:
            raise SettingsError("FRAUD_ROBOTIC_INTERVALS x (FRAUD_ROBOTIC_LOOKBACK_MS + H + F) is too large")
        if self.travel_max_kmh * (self.travel_lookback_ms + self.dedup_horizon_ms + self.max_future_ms) >= EXACT_MAX:
            raise SettingsError("FRAUD_TRAVEL_MAX_KMH x (FRAUD_TRAVEL_LOOKBACK_MS + H + F) is too large to be exact")

    def _validate_event_time_span(self) -> None:
        """Accepted event times span H + F around arrival; that span must sit well inside the
        series' retention, or a sample of an accepted click could be refused as too old."""
        span = self.dedup_horizon_ms + self.max_future_ms + self.bucket_ms
        if span > EVENT_TIME_SPAN_MAX:
            raise SettingsError("FRAUD_DEDUP_HORIZON_MS + FRAUD_MAX_FUTURE_MS is too large to keep times exact")
        if self.series_retention_ms and 2 * span > self.series_retention_ms:
            raise SettingsError(
                "FRAUD_SERIES_RETENTION_MS must be at least twice FRAUD_DEDUP_HORIZON_MS + FRAUD_MAX_FUTURE_MS"
                " + FRAUD_BUCKET_MS, so that no accepted click's count can be refused as too old")


# What a verdict entry always holds: the detector's own two fields, and the click fields the pipeline's
# readers need (the aggregator's event-time bucket and offender dimensions), whatever FRAUD_VERDICT_FIELDS lists.
VERDICT_ADDED_FIELDS = ("verdict", "raw_id")
VERDICT_REQUIRED_FIELDS = (*OFFENDER_DIMENSIONS, "ts")

# Integers up to this are exact in a double (Lua's numbers).
EXACT_MAX = 2**53

# More partitions than this would cost more in per-partition state and polling than they could spread.
PARTITIONS_MAX = 1024

# Arrival times end at year 9999 (2.5e14 ms); event times up to 1e15 ms stay exact in Lua's doubles.
EVENT_TIME_SPAN_MAX = 10**15


def _parse(name: str, raw: str, type_name: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    if kind == "int":
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if kind == "Path":
        return Path(raw)
    return raw
