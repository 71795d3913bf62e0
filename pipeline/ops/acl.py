"""One Redis ACL user per role, each allowed only the commands its job needs, on the keys it needs.

The key patterns are derived from ``Keys`` (never written out twice), so they follow the namespace;
a partition's key becomes one pattern for that key in every partition (``clicks:{*}:in``), so the
rules hold whatever ``FRAUD_PARTITIONS`` is. Commands a Redis Function runs are checked against
the calling user too, each with its keys: a stage's user gets ``FCALL`` on every key it passes,
and each command its steps run inside ``fraud.lua`` in a selector limited to the keys that
command is for (``HSET`` on its leases only, ``XGROUP SETID`` on its inputs only...). Creating
what a stage works on (its group, its series, the filter) is allowed the same way, so a stage
started before ``fraud setup`` still finds its things.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from pipeline.core.keys import VERDICTS, Keys, PartitionKeys

ADMIN = "admin"
ROLES: tuple[str, ...] = ("producer", "router", "detector", "aggregator", "monitor", "operator", "admin",
                          "dashboard")

# Every user may log in, pick its database, check the server's modules (each client's first step)
# and ping; nobody gets Pub/Sub channels.
_BASE = ("resetchannels", "-@all", "+ping", "+select", "+hello", "+client|setinfo", "+client|setname",
         "+module|list")
# A stage calls its steps and checks the library is loaded; what the steps run is granted per key.
_STAGE = ("+fcall", "+function|list")
# fraud_lease and fraud_member (the server's clock, the lease hashes, the members' sorted set);
# every step's fence reads its lease (HMGET) too.
_MEMBERSHIP = ("+time", "+hmget", "+hset", "+zremrangebyscore", "+zadd", "+zrem", "+zrange")
# The offset of a stage's input: read from it, create its group and read where it stands, move it
# (in the step: XGROUP SETID), trim what every group is done with (fraud_trim).
_INPUT = ("+xread", "+xgroup|create", "+xinfo|groups", "+xgroup|setid", "+xpending", "+xtrim")
_SERIES_CREATE = ("+ts.create", "+ts.createrule", "+ts.alter")
# Module commands are named one by one: Redis 7's modules put them in no ACL category.
_SERIES_READ = ("+ts.get", "+ts.mget", "+ts.range", "+ts.revrange", "+ts.mrange", "+ts.mrevrange", "+ts.info",
                "+ts.queryindex")
_FILTER_READ = ("+cf.exists", "+cf.mexists", "+cf.info", "+cf.count", "+cf.scandump")
_MODULE_WRITES = ("+ts.add", "+ts.madd", "+ts.incrby", "+ts.decrby", "+ts.create", "+ts.alter", "+ts.createrule",
                  "+ts.deleterule", "+ts.del", "+cf.reserve", "+cf.add", "+cf.addnx", "+cf.insert", "+cf.insertnx",
                  "+cf.del", "+cf.loadchunk")
# Admin-only: replacing the code every stage runs, and anything server-wide.
_NOT_FOR_OPERATORS = ("-@dangerous", "-@admin", "-function|load", "-function|delete", "-function|flush",
                      "-function|restore", "-script|flush", "-script|kill", "-function|kill")


def _glob(key: str) -> str:
    """A key name as an ACL pattern matching itself only (glob characters escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in key)


def in_every_partition(keys: Keys, name: Callable[[PartitionKeys], str]) -> str:
    """An ACL pattern for one key of every partition: its name with the partition's number a
    wildcard. Found by comparing two partitions' names, so how a partition is spelt in a key
    stays ``PartitionKeys``' alone."""
    first, second = name(keys.partition(0)), name(keys.partition(1))
    head = _shared(first, second)
    tail = _shared(first[::-1], second[::-1])
    assert head + tail < len(first), f"{first!r} does not name its partition"
    return _glob(first[:head]) + "*" + _glob(first[len(first) - tail:])


def _shared(a: str, b: str) -> int:
    """How many characters two strings share at their start."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _keys(mode: str, *patterns: str) -> list[str]:
    return [f"{mode}~{pattern}" for pattern in patterns]


def _selector(commands: tuple[str, ...], *patterns: str) -> str:
    """Commands allowed on these keys only (a command passes when one selector allows it and all its keys)."""
    return "(" + " ".join((*commands, *_keys("", *patterns))) + ")"


def _stage_rules(keys: Keys, stage: str, lease: str, inputs: tuple[str, ...], own: tuple[str, ...],
                 *jobs: str) -> list[str]:
    """A stage's user: FCALL on every key it passes to its steps, its membership and leases, the
    number of partitions, its inputs' offsets, then its own jobs (selectors)."""
    members = _glob(keys.members(stage))
    return [*_BASE, *_STAGE, *_keys("", lease, members, *inputs, *own),
            _selector(("+hsetnx", "+hget"), _glob(keys.config)),
            _selector(_MEMBERSHIP, lease, members),
            _selector(_INPUT, *inputs), *jobs]


def role_rules(role: str, keys: Keys) -> list[str]:
    """The ACL rules of one role (without its password), ``ACL SETUSER`` words."""
    g = _glob

    def each(name: Callable[[PartitionKeys], str]) -> str:
        return in_every_partition(keys, name)

    everything = g(keys.namespace) + ":*"
    inputs, verdicts, dead, stats = (each(lambda k: k.input), each(lambda k: k.verdicts), each(lambda k: k.dead),
                                     each(lambda k: k.stats))
    commits = {stage: each(lambda k, s=stage: k.commits(s)) for stage in ("detector", "aggregator")}
    series = [each(lambda k, v=v: k.series(v)) for v in VERDICTS]
    rollups = [each(lambda k, v=v: k.rollup(v)) for v in VERDICTS]
    if role == "producer":
        # Sends clicks, to clicks:raw or straight into their partitions (after reading how many
        # there are), and nothing else: it reads nothing back (`fraud replay FILE` is the operator's).
        return [*_BASE, _selector(("+xadd",), g(keys.raw), inputs), _selector(("+hget",), g(keys.config))]
    if role == "router":
        # fraud_route copies into a partition's input (or dead letters), counts, and marks how far it went.
        routed = each(lambda k: k.routed)
        return _stage_rules(keys, "router", g(keys.lease("router")), (g(keys.raw),), (inputs, dead, stats, routed),
                            _selector(("+xadd", "+xinfo|stream"), inputs),
                            _selector(("+xadd",), dead), _selector(("+hincrby",), stats),
                            _selector(("+get", "+set"), routed))
    if role == "detector":
        windows, index, blacklist = each(lambda k: k.window_prefix) + "*", each(lambda k: k.window_index), \
            each(lambda k: k.blacklist)
        rejected = each(lambda k: k.rejected)
        trails = each(lambda k: k.trail_prefix) + "*"
        # The blacklist too: FCALL's keys count as written; only CF.MEXISTS (and its creation) reaches it.
        return _stage_rules(keys, "detector", each(lambda k: k.lease("detector")), (inputs,),
                            (verdicts, dead, stats, commits["detector"], blacklist, index, rejected),
                            _selector(("+xadd",), verdicts, dead, commits["detector"]),
                            _selector(("+xtrim",), dead), _selector(("+hincrby",), stats),
                            _selector(("+cf.mexists", "+cf.reserve"), blacklist),
                            _selector(("+zadd", "+zscore", "+zcount", "+zremrangebyscore", "+zrangebyscore", "+zrem",
                                       "+del"), windows, index, rejected),
                            # A device's state goes whole: one DEL of its window and its trail.
                            _selector(("+hmget", "+hset"), trails), _selector(("+del",), windows, trails))
    if role == "aggregator":
        # Its step also keeps the offender buckets (bounded sorted sets, each with an expiry).
        offenders = each(lambda k: k.offenders_prefix) + "*"
        return _stage_rules(keys, "aggregator", each(lambda k: k.lease("aggregator")), (verdicts,),
                            (dead, stats, commits["aggregator"], *series, offenders),
                            _selector(("+xadd",), dead, commits["aggregator"]),
                            _selector(("+xtrim",), dead), _selector(("+hincrby",), stats),
                            _selector(("+ts.get", "+ts.add"), *series),
                            _selector(_SERIES_CREATE, *series, *rollups),
                            _selector(("+zscore", "+zcard", "+zincrby", "+zpopmin", "+zadd", "+pexpireat"), offenders))
    if role == "monitor":
        # Reads the streams', groups', leases' and members' state, writes its own health series;
        # merges the partitions' offender buckets into its own; and (`fraud status` and `fraud
        # offenders` run as this role) reads each node's figures, the cluster's shape and the
        # offenders (FCALL_RO: no-writes functions only), and keeps RedisTimeSeries' view of the cluster.
        health = g(keys.health_series("", ""))[:-1] + "*"
        leases = [g(keys.lease("*"))[:-2] + "*", each(lambda k: k.lease("")) + "*"]
        offenders, merged = each(lambda k: k.offenders_prefix) + "*", g(keys.merged_offenders_prefix) + "*"
        return [*_BASE, "+xinfo|stream", "+xinfo|groups", "+xinfo|consumers", "+xlen", "+xrevrange", "+xrange",
                "+hgetall", "+hget", "+hmget", "+zrange", "+zrangebyscore", "+zcard", "+memory|usage", "+time",
                "+ts.get", "+ts.info", "+ts.add", "+ts.madd", "+ts.create", "+ts.alter",
                "+info", "+cluster|nodes", "+cluster|slots", "+timeseries.infocluster", "+timeseries.refreshcluster",
                "+fcall_ro",
                *_keys("%R", g(keys.raw), g(keys.config), g(keys.members("")) + "*", *leases, inputs, verdicts,
                       dead, stats, *commits.values(), offenders),
                *_keys("", health),
                _selector(("+zrange", "+exists", "+del", "+zadd", "+pexpireat", "+rename"), merged)]
    if role == "operator":
        # Blacklist, group moves, replays and re-processing aside, status: anything on the
        # namespace's keys except what is admin's (the function library, server-wide commands).
        return [*_BASE, "+@read", "+@write", "+@stream", "+@scripting", "+@keyspace", "+@hash", "+@sortedset",
                "+@set", "+@list", "+@string",
                *_SERIES_READ, *_FILTER_READ, *_MODULE_WRITES, *_NOT_FOR_OPERATORS,
                "+module|list", "+memory|usage", "+time", f"~{everything}"]
    if role == "admin":
        return ["+@all", "~*", "&*"]
    if role == "dashboard":
        # Grafana's data source: read-only commands on the namespace's keys (the plugin runs any
        # target's raw query as a command, so the user, not the dashboard, is the limit).
        # FCALL_RO runs only functions flagged no-writes (the offender tables' fraud_offenders).
        return [*_BASE, "+@read", *_SERIES_READ, "+fcall_ro", "-@dangerous", *_keys("%R", everything)]
    raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def setuser_words(role: str, keys: Keys, password: str | None) -> list[str]:
    """``ACL SETUSER`` arguments; a role without a password is switched off (nobody logs in as it)."""
    login = ["on", f"#{password_hash(password)}"] if password else ["off"]
    return [role, "reset", *login, *role_rules(role, keys)]


def acl_file(keys: Keys, passwords: Mapping[str, str]) -> str:
    """An ACL file (``aclfile``) with every role and the default user off; passwords stored hashed."""
    lines = ["user default off resetchannels -@all"]
    for role in ROLES:
        words = setuser_words(role, keys, passwords.get(role))
        lines.append("user " + " ".join(w for w in words if w != "reset"))
    return "\n".join(lines) + "\n"
