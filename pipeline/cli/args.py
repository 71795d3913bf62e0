"""Argument types shared by the commands, so that every bad value reads the same."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(parse: Callable[[str], float], minimum: float, inclusive: bool, what: str) -> Callable[[str], float]:
    bound = f"{'at least' if inclusive else 'more than'} {minimum:g}"

    def check(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum) or math.isinf(value) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    return check


positive_float = _number(float, 0, False, "a number")
non_negative_float = _number(float, 0, True, "a number")
positive_int: Callable[[str], int] = _number(int, 0, False, "a whole number")  # type: ignore[assignment]
non_negative_int: Callable[[str], int] = _number(int, 0, True, "a whole number")  # type: ignore[assignment]
