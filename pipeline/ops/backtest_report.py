"""What a backtest found: confusion matrices of verdicts against labels, per verdict and overall.

A click is *flagged* when its verdict is not ``clean``. Per verdict, "flagged" means "given that
verdict". Clicks that got no verdict (dead-lettered by the detector, or a retry of a click
already judged) are listed beside the matrices and are in none of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipeline.core.keys import VERDICTS

CLEAN = "clean"
DEAD = "dead"
NONE = "none"
FLAGGED = "flagged"  # the overall matrix: any verdict but clean
RULE_VERDICTS = tuple(v for v in VERDICTS if v != CLEAN)


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def as_json(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": self.precision, "recall": self.recall}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class Outcomes:
    counts: Counter[tuple[str, bool]]  # (verdict, dead or none; labelled fraud) -> clicks

    def judged(self, fraud: bool) -> int:
        return sum(self.counts[v, fraud] for v in VERDICTS)

    def confusion(self, flagged: str) -> Confusion:
        """``flagged`` is one verdict, or FLAGGED for any verdict but clean."""
        picked = RULE_VERDICTS if flagged == FLAGGED else (flagged,)
        tp = sum(self.counts[v, True] for v in picked)
        fp = sum(self.counts[v, False] for v in picked)
        return Confusion(tp, fp, self.judged(True) - tp, self.judged(False) - fp)

    def matrices(self) -> dict[str, Confusion]:
        return {name: self.confusion(name) for name in (*RULE_VERDICTS, FLAGGED)}

    def as_json(self) -> dict[str, Any]:
        outcomes = {o: {"fraud": self.counts[o, True], "not_fraud": self.counts[o, False]}
                    for o in (*VERDICTS, DEAD, NONE)}
        return {"outcomes": outcomes, "confusion": {k: c.as_json() for k, c in self.matrices().items()}}

    def text(self) -> str:
        lines = [f"{'outcome':<14}{'fraud':>10}{'not fraud':>11}"]
        lines += [f"{o:<14}{self.counts[o, True]:>10}{self.counts[o, False]:>11}"
                  for o in (*VERDICTS, DEAD, NONE)]
        lines.append("")
        lines.append(f"{'flagged by':<14}{'TP':>8}{'FP':>8}{'FN':>8}{'TN':>8}{'precision':>11}{'recall':>8}")
        for name, c in self.matrices().items():
            label = "any rule" if name == FLAGGED else name
            lines.append(f"{label:<14}{c.tp:>8}{c.fp:>8}{c.fn:>8}{c.tn:>8}"
                         f"{_share(c.precision):>11}{_share(c.recall):>8}")
        return "\n".join(lines)


def sweep_header() -> str:
    return f"{'setting':<18}{'flagged':>9}{'TP':>8}{'FP':>8}{'FN':>8}{'TN':>8}{'precision':>11}{'recall':>8}"


def sweep_row(setting: str, outcomes: Outcomes) -> str:
    c = outcomes.confusion(FLAGGED)
    return (f"{setting:<18}{c.tp + c.fp:>9}{c.tp:>8}{c.fp:>8}{c.fn:>8}{c.tn:>8}"
            f"{_share(c.precision):>11}{_share(c.recall):>8}")
