"""Live progress for local runs: rows read, verified, scored, written, in errors.

Stage code calls `progress.add(name, n)`; with Beam's in-process runner the stages share this process,
so a background thread can render the counters. On a TTY the line redraws in place twice a second;
otherwise (CI logs, files) a line is printed every 10 seconds. Remote runners show Beam metrics instead.
"""

from __future__ import annotations

import sys
import threading
import time

STAGES = ("read", "verified", "verifier_cached", "scored", "written", "errors")
# The counters engines forward from their workers' per-unit counts ("written" is counted by the fuse step).
UNIT_COUNTERS = tuple(name for name in STAGES if name != "written")

_lock = threading.Lock()
_counts: dict[str, int] = {}


def add(name: str, count: int):
    with _lock:
        _counts[name] = _counts.get(name, 0) + count


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def reset():
    with _lock:
        _counts.clear()


def _format(counts: dict[str, int], total: int, elapsed: float) -> str:
    done = counts.get("written", 0) + counts.get("errors", 0)
    rate = counts.get("verified", 0) / elapsed if elapsed > 0 else 0.0
    parts = [f"{name} {counts.get(name, 0):,}" for name in STAGES]
    percent = f"{100.0 * done / total:5.1f}%" if total else "  -  "
    return f"[herolabel] {percent} of {total:,} rows | " + " | ".join(parts) + f" | {rate:,.0f} rows/s verified"


class ProgressDisplay:
    """Context manager that renders the counters to `stream` while a run is in progress."""

    def __init__(self, total_rows: int, stream=None, enabled: bool = True):
        self.total_rows = total_rows
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self):
        reset()
        self._started = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="herolabel-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        interval = 0.5 if tty else 10.0
        while not self._stop.wait(interval):
            self._render(final=False, tty=tty)

    def _render(self, final: bool, tty: bool):
        line = _format(snapshot(), self.total_rows, time.monotonic() - self._started)
        if tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._render(final=True, tty=hasattr(self.stream, "isatty") and self.stream.isatty())
