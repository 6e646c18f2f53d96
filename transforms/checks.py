"""Value checks shared by the frozen config dataclasses (each names its own field in the message)."""

from __future__ import annotations

import math


def is_whole(value, minimum: int) -> bool:
    """An int (bools excluded, though Python counts them as ints) that is >= minimum."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_finite_number(value) -> bool:
    """An int or float (bools excluded) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
