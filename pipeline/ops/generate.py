"""``fraud generate``: a labelled synthetic click trace in a file, for ``fraud replay``.

The clicks come from the demo generator's traffic model; their event times
from a synthetic clock, so a trace is the same, byte for byte, for the same
seed, count, rate and start.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path

from agents.generator import Click, traffic
from pipeline.ops.trace_files import csv_columns, csv_row, jsonl_line


def labelled_trace(seed: int, count: int, start_ms: int, rate: float) -> Iterator[tuple[Click, str]]:
    """``count`` clicks with labels; the clock advances 1000/rate ms per click on average."""
    # Its own generator, so that the traffic model's draws stay those of `agent generator`.
    gaps = random.Random(f"clock:{seed}")
    now = float(start_ms)
    clicks = traffic(seed, lambda: int(now))
    for _ in range(count):
        yield next(clicks)
        now += gaps.expovariate(rate) * 1000


def write_trace(path: Path, fmt: str, seed: int, count: int, start_ms: int, rate: float) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "jsonl":
            for fields, label in labelled_trace(seed, count, start_ms, rate):
                out.write(jsonl_line(fields, label).decode())
            return
        # The trace is deterministic: a first pass finds every column the second one writes.
        columns = csv_columns(name for fields, _ in labelled_trace(seed, count, start_ms, rate)
                              for name in fields[::2])
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for fields, label in labelled_trace(seed, count, start_ms, rate):
            writer.writerow(csv_row(columns, fields, label))
