"""Runtime of the click-fraud pipeline, in layers that depend only downwards.

- ``core``: settings, key names, errors, logging, stream ids: no Redis, no I/O.
- ``client``: reaching Redis: the agents' hiredis client, the tools' redis-py opener, the
  Function library loader, and what counts as "Redis is unavailable".
- ``runtime``: running stages: the consumer-group agent, a process's worker, the supervisor.
- ``ops``: what operators run against a live pipeline: status, blacklist, replay, groups.
- ``dev``: development and measurement: the embedded Redis Stack, bench, soak.
- ``cli``: the ``fraud`` command: one thin module per command, all listed in ``cli.main``.

The stages themselves live in the top-level ``agents`` package (on top of ``runtime``),
the wire contract in ``schemas``.
"""
