"""A verifier for tests that need a run to last: exact match, 50 ms per response (tests/test_object_stores.py
stops a server while such a run is in flight)."""

from __future__ import annotations

import time

DELAY_S = 0.05


def verify(reference, response, timeout_s):
    time.sleep(DELAY_S)
    answer = (response or "").strip().rsplit(" ", 1)[-1]
    return (1.0 if answer == reference else 0.0), "ok", answer
