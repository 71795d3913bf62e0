"""``fraud bench --baseline REF``: two designs, in the same run on the same machine.

Machines of one kind differ widely, so designs are only compared side by side: the baseline
commit and the current tree take turns (baseline, current, baseline, current, ...) for each
detector count, one run at a time, each run a bench of that tree's own (see ``baseline``), on a
fresh embedded server of its own. Reported per design and detector count: the median and the
min-max of end-to-end clicks/s and of Redis CPU per click, and whether AOF was on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.dev.baseline import Tree, check_imports, checked_out, current_tree, run_tree_bench

# Server start-up and the function library's set-up come on top of the bench's own --timeout.
_START_UP_ALLOWANCE_S = 120.0


@dataclass(frozen=True)
class Run:
    design: str
    detectors: int
    round: int
    report: dict[str, Any]
    # The machine's 1-minute load average as the run began: other work on it skews every figure.
    load_before: float

    @property
    def clicks_per_s(self) -> float:
        return float(self.report["clicks_per_s"])

    @property
    def redis_us(self) -> float:
        return float(self.report["cpu_us_per_click"]["redis"])

    @property
    def all_us(self) -> float:
        """Every process's CPU per click, whichever stages the design runs."""
        return float(sum(self.report["cpu_us_per_click"].values()))


DIRECT = "current --direct"


def tree_bench_options(args: argparse.Namespace) -> list[str]:
    """The options each tree's bench gets, but for the detector count (which varies by run).

    Optional ones only when set, so that a baseline older than an option still runs."""
    options = ["--clicks", str(args.clicks), "--aggregators", str(args.aggregators),
               "--timeout", str(args.timeout)]
    if args.rate:
        options += ["--rate", str(args.rate)]
    if args.sends:
        options += ["--sends", str(args.sends)]
    if args.no_aof:
        options.append("--no-aof")
    return options


def compare(args: argparse.Namespace, home: Path) -> int:
    current = current_tree()
    counts = args.compare_detectors or [args.detectors]
    options = tree_bench_options(args)
    runs: list[Run] = []
    with checked_out(current, args.baseline) as baseline:
        for tree in (baseline, current):
            progress(f"{tree.label} {tree.short} imports {check_imports(tree, home)[0]}")
        # (design label, tree, its own options): the current tree also with producers writing
        # straight into the partitions, when asked (an option the baseline may not know).
        designs = [("baseline", baseline, []), ("current", current, [])]
        if args.with_direct:
            designs.append((DIRECT, current, ["--direct"]))
        total = len(counts) * args.repeat * len(designs)
        for detectors in counts:
            for round_ in range(args.repeat):
                for label, tree, own in designs:
                    progress(f"run {len(runs) + 1}/{total}: {label} {tree.short}, {detectors} detector(s)")
                    load_before = os.getloadavg()[0]
                    report = run_tree_bench(tree, home, [*options, *own, "--detectors", str(detectors)],
                                            args.timeout + _START_UP_ALLOWANCE_S)
                    runs.append(Run(label, detectors, round_, report, load_before))
    summary = summarise(runs)
    if args.json:
        document = {"baseline": baseline.describe(), "current": current.describe(), "repeat": args.repeat,
                    "runs": [{"design": r.design, "detectors": r.detectors, "round": r.round,
                              "load_before": r.load_before, "report": r.report}
                             for r in runs],
                    "summary": summary}
        print(orjson.dumps(document).decode())
    else:
        print_table(baseline, current, summary, args)
        loads = [run.load_before for run in runs]
        print(f"load average (1 min) as the runs began: {min(loads):.2f}-{max(loads):.2f}")
    return 0


def progress(message: str) -> None:
    """A line on stderr while a bench runs (stdout holds the report)."""
    print(f"fraud bench: {message}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max: how designs are compared, run against run."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per design and detector count, in the order they were first run."""
    groups: dict[tuple[int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.detectors, run.design), []).append(run)
    return [{"design": design, "detectors": detectors, "runs": len(group),
             "clicks_per_s": spread([r.clicks_per_s for r in group]),
             "redis_cpu_us_per_click": spread([r.redis_us for r in group]),
             "all_cpu_us_per_click": spread([r.all_us for r in group]),
             "latency_ms_p50": spread([float(r.report["latency_ms_p50"]) for r in group]),
             "latency_ms_p99": spread([float(r.report["latency_ms_p99"]) for r in group]),
             "persistence": " / ".join(sorted({r.report["persistence"] for r in group}))}
            for (detectors, design), group in groups.items()]


def figure(values: dict[str, float], digits: int) -> str:
    """A spread as `median (min-max)`."""
    return f"{values['median']:,.{digits}f} ({values['min']:,.{digits}f}-{values['max']:,.{digits}f})"


def print_table(baseline: Tree, current: Tree, summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"baseline: {baseline.ref} = {baseline.short}; current: {current.ref} = {current.short}")
    print(f"{args.clicks} clicks a run, {args.aggregators} aggregator(s), "
          f"{'flat out' if not args.rate else f'offered {args.rate:g} clicks/s'}; "
          f"median (min-max) of {args.repeat} run(s) each, designs alternating")
    # At an offered rate the latency is what the run measures; flat out it is only the backlog's age.
    latency = ("latency p50 ms", "latency p99 ms") if args.rate else ()
    header = ("design", "commit", "detectors", "clicks/s", "Redis CPU µs/click", "all CPU µs/click", *latency,
              "Redis")
    rows = [(row["design"], baseline.short if row["design"] == "baseline" else current.short,
             str(row["detectors"]), figure(row["clicks_per_s"], 0), figure(row["redis_cpu_us_per_click"], 1),
             figure(row["all_cpu_us_per_click"], 1),
             *((figure(row["latency_ms_p50"], 0), figure(row["latency_ms_p99"], 0)) if latency else ()),
             row["persistence"]) for row in summary]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    for line in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    by_key = {(row["detectors"], row["design"]): row for row in summary}
    for detectors in dict.fromkeys(row["detectors"] for row in summary):
        old = by_key[(detectors, "baseline")]
        for design in ("current", DIRECT):
            new = by_key.get((detectors, design))
            if new is not None:
                print(f"{detectors} detector(s), {design} / baseline medians: clicks/s "
                      f"{_ratio(new, old, 'clicks_per_s')}, "
                      f"Redis CPU per click {_ratio(new, old, 'redis_cpu_us_per_click')}")


def _ratio(new: dict[str, Any], old: dict[str, Any], figure: str) -> str:
    before = old[figure]["median"]
    return f"{new[figure]['median'] / before:.2f}x" if before else "n/a"
