"""One Redis ACL user per role, each allowed only the commands its job needs, on the keys it needs.

The key patterns are derived from ``Keys`` (never written out twice), so they follow the namespace.
Commands a Redis Function runs are checked against the calling user too: a stage's user needs the
commands its step runs inside ``fraud.lua`` as well as the ``FCALL`` itself. Creating what a
stage works on (its group, its series, the filter) is allowed by a selector limited to that
command on those keys only, so a stage started before ``fraud setup`` still finds its things.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pipeline.core.keys import VERDICTS, Keys

ADMIN = "admin"
ROLES: tuple[str, ...] = ("producer", "detector", "aggregator", "monitor", "operator", "admin", "dashboard")

# Every user may log in, pick its database, check the server's modules (each client's first step)
# and ping; nobody gets Pub/Sub channels.
_BASE = ("resetchannels", "-@all", "+ping", "+select", "+hello", "+client|setinfo", "+client|setname",
         "+module|list")
# What a consumer-group stage runs itself and inside its Function steps (fraud.lua).
_STAGE = ("+xreadgroup", "+xack", "+xadd", "+xautoclaim", "+xclaim", "+xpending", "+xtrim", "+xinfo|stream",
          "+xinfo|groups", "+xinfo|consumers", "+xgroup|delconsumer", "+hincrby", "+fcall", "+function|list")
_SERIES_WRITE = ("+ts.add", "+ts.madd", "+ts.get", "+ts.info", "+ts.alter")
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


def _keys(mode: str, *names: str) -> list[str]:
    return [f"{mode}~{name}" for name in names]


def _selector(*parts: str) -> str:
    return "(" + " ".join(parts) + ")"


def role_rules(role: str, keys: Keys) -> list[str]:
    """The ACL rules of one role (without its password), ``ACL SETUSER`` words."""
    g = _glob
    everything = g(keys.namespace) + ":*"
    series = [g(keys.series(v)) for v in VERDICTS] + [g(keys.rollup(v)) for v in VERDICTS]
    if role == "producer":
        # Sends clicks, and nothing else: it reads nothing back (`fraud replay FILE` is the operator's).
        return [*_BASE, "+xadd", *_keys("%W", g(keys.raw))]
    if role == "detector":
        return [*_BASE, *_STAGE, "+del", "+zadd", "+zcount", "+zrangebyscore", "+zremrangebyscore", "+zscore",
                "+cf.mexists", "+cf.exists",
                # The blacklist too: FCALL's keys count as written; only CF.MEXISTS reaches it.
                *_keys("", g(keys.raw), g(keys.verdicts), g(keys.dead), g(keys.stats), g(keys.window_index),
                       g(keys.window_prefix) + "*", g(keys.blacklist)),
                _selector("+xgroup|create", f"~{g(keys.raw)}"),
                _selector("+cf.reserve", f"~{g(keys.blacklist)}")]
    if role == "aggregator":
        # Its step also keeps the offender buckets (bounded sorted sets, each with an expiry).
        return [*_BASE, *_STAGE, *_SERIES_WRITE, "+zscore", "+zcard", "+zincrby", "+zpopmin", "+zadd", "+pexpireat",
                *_keys("", g(keys.verdicts), g(keys.dead), g(keys.stats), *series, g(keys.offenders_prefix) + "*"),
                _selector("+xgroup|create", f"~{g(keys.verdicts)}"),
                _selector(*_SERIES_CREATE, *(f"~{s}" for s in series))]
    if role == "monitor":
        # Reads the streams' and groups' state, writes its own health series.
        health = g(keys.health_series("", ""))[:-1] + "*"
        return [*_BASE, "+xinfo|stream", "+xinfo|groups", "+xinfo|consumers", "+xlen", "+xrevrange", "+xrange",
                "+hgetall", "+hget", "+memory|usage", "+time", "+ts.get", "+ts.info", "+ts.add", "+ts.madd",
                "+ts.create", "+ts.alter",
                *_keys("%R", g(keys.raw), g(keys.verdicts), g(keys.dead), g(keys.stats)),
                *_keys("", health)]
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
