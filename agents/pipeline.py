"""The pipeline, declared once: its stages in flow order.

Adding a stage is one declaration here and its handler module; the agent command, ``fraud
up``, status, the monitor, re-processing, bench and soak all take their list of stages from
``PIPELINE``.
"""

from __future__ import annotations

from operator import attrgetter

from agents.aggregator import Aggregator
from agents.detector import Detector
from agents.router import Router
from pipeline.core.keys import VERDICTS
from pipeline.runtime.stage import Stage, by_name

ROUTER = Stage(
    name="router", handler=Router, input="raw", output="input",
    counters=("routed", "dead"), finished=("routed", "dead"), partitioned=False,
    help="copy each raw click into its device's partition")
DETECTOR = Stage(
    name="detector", handler=Detector, input="input", output="verdicts",
    counters=(*VERDICTS, "duplicate", "dead"), finished=(*VERDICTS, "duplicate", "dead"),
    help="give each raw click its verdict", linger_ms=attrgetter("detector_linger_ms"))
AGGREGATOR = Stage(
    name="aggregator", handler=Aggregator, input="verdicts", output=None,
    counters=("counted", "rejected", "dead"), finished=("counted", "rejected", "dead"),
    help="count the verdicts as TimeSeries", linger_ms=attrgetter("aggregator_linger_ms"))

PIPELINE: tuple[Stage, ...] = (ROUTER, DETECTOR, AGGREGATOR)


def stage(name: str) -> Stage:
    return by_name(PIPELINE, name)
