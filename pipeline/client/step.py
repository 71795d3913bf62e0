"""The contract of a server-side step, written once: what a Redis Function is called with, by name.

A step's ARGV opens with the names it gives its KEYS and its parameters, so the Lua side reads
them by name (``decode`` in ``agents/fraud.lua``) and never by position::

    <#keys> key names...  <#params> param names... param values...
    <#sections> then per section: name <#fields> field names... <#records> records...

A step's settings, the same for every call of a deployment (its ``config``), travel as one
parameter, ``config``: ``name=value`` lines, packed once by the caller (``pack_config``). The Lua
side parses each distinct text once and keeps it, and reads a setting by name like any parameter.

A record is its fields in the declared order; a section whose last field is ``n`` has, after
each record's fields, ``n`` more values (a click's fields, a dead letter's copy). The reply is
``ok`` followed by name/value pairs, or ``fenced`` followed by the ids the caller no longer owns.
A step that commits a batch (``commit`` in fraud.lua) ends its pairs with ``next_attempt`` 1 when
it also counted the attempt at the batch after its ``last`` (``pipeline/runtime/attempts.py``), else 0.
Python declares each step once (``Step``); ``argv`` checks every name against the declaration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.replies import pairs

TAIL = "n"
# The parameter that carries a step's settings, packed (``Step.pack_config``).
CONFIG = "config"
# The reply's pair in which a committing step says whether it counted the next batch's attempt.
NEXT_ATTEMPT = "next_attempt"


@dataclass(frozen=True)
class Section:
    name: str
    fields: tuple[str, ...]

    @property
    def counted_tail(self) -> bool:
        return self.fields[-1:] == (TAIL,)


@dataclass(frozen=True)
class StepReply:
    fenced: list[bytes] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # The step committed and counted the attempt at the batch after its `last`.
    next_attempt: bool = False


@dataclass(frozen=True)
class Step:
    function: str
    keys: tuple[str, ...]
    params: tuple[str, ...] = ()
    sections: tuple[Section, ...] = ()
    config: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if CONFIG in self.params or set(self.params) & set(self.config):
            raise ValueError(f"{self.function}: a param is named {CONFIG}, or also in its config")
        if any("=" in name or "\n" in name for name in self.config):
            raise ValueError(f"{self.function}: a config name holds '=' or a line break")

    def pack_config(self, values: Mapping[str, Any]) -> str:
        """The ``config`` parameter of this step's calls, from its settings' values (by name)."""
        _same_names(self.function, "config", self.config, values)
        texts = {name: str(values[name]) for name in self.config}
        for name, text in texts.items():
            if "\n" in text:
                raise ValueError(f"{self.function}: the config value of {name} holds a line break")
        return "\n".join(f"{name}={text}" for name, text in texts.items())

    def argv(self, keys: Mapping[str, str], params: Mapping[str, Any] | None = None,
             sections: Mapping[str, Sequence[Sequence[Any]]] | None = None, config: str | None = None) -> list[Any]:
        """The FCALL command; `config` as ``pack_config`` made it. A record is a sequence of its fields,
        then (counted tail) the tail's values."""
        params, sections = params or {}, sections or {}
        _same_names(self.function, "keys", self.keys, keys)
        _same_names(self.function, "params", self.params, params)
        _same_names(self.function, "sections", tuple(s.name for s in self.sections), sections)
        if (config is None) != (not self.config):
            raise ValueError(f"{self.function}: a config is given if and only if the step declares one")
        names, values = self.params, [params[p] for p in self.params]
        if config is not None:
            names, values = (*names, CONFIG), [*values, config]
        argv: list[Any] = ["FCALL", self.function, len(self.keys), *(keys[k] for k in self.keys),
                           len(self.keys), *self.keys, len(names), *names, *values, len(self.sections)]
        for section in self.sections:
            records = sections[section.name]
            argv += (section.name, len(section.fields), *section.fields, len(records))
            for record in records:
                argv += record
        return argv

    @staticmethod
    def reply(reply: Any) -> StepReply:
        if reply and reply[0] == b"fenced":
            return StepReply(fenced=list(reply[1:]))
        counts = {name.decode(): int(n) for name, n in pairs(reply[1:]).items()}
        return StepReply(next_attempt=bool(counts.pop(NEXT_ATTEMPT, 0)), counts=counts)


def counted(fields: Sequence[Any], tail: Sequence[Any]) -> list[Any]:
    """A record of a counted-tail section: its fixed fields, the tail's length, the tail."""
    return [*fields, len(tail), *tail]


def _same_names(function: str, what: str, declared: tuple[str, ...], given: Mapping[str, Any]) -> None:
    if set(given) != set(declared):
        raise ValueError(f"{function}: {what} {sorted(given)} differ from the declared {list(declared)}")
