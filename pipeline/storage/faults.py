"""Fault injection for the resume tests: kill this process's whole group at a named point, as a crash would."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "HEROLABEL_FAULT_AT"
# The process group a fault kills, when the engine runs work in processes of another group (Ray's workers):
# set by the engine on the driver, inherited by its workers, so a fault anywhere kills the whole run.
FAULT_GROUP_ENV = "HEROLABEL_FAULT_GROUP"
# A directory where the run's processes count the points they reach together (one byte appended per reach),
# when the engine spreads a unit's work over worker processes that take units in no fixed order (Ray's):
# "the N-th time" is then the N-th in the run, as on an engine whose work runs in one process.
FAULT_COUNTS_ENV = "HEROLABEL_FAULT_COUNTS"
FAULT_POINTS = ("verify", "score", "group", "write")
_REACHED: dict[str, int] = {}


def fault_point(name: str) -> None:
    """With HEROLABEL_FAULT_AT=NAME:N, the N-th time point NAME is reached in a process (in the run, with
    HEROLABEL_FAULT_COUNTS), SIGKILL this process's whole group (as a crash or an OOM killer would).
    Unset (always, outside tests): nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not spec.startswith(f"{name}:"):
        return
    counts = os.environ.get(FAULT_COUNTS_ENV)
    if counts:
        # O_APPEND writes of one byte never interleave, so the file's size counts every process's reaches.
        descriptor = os.open(os.path.join(counts, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, b".")
            reached = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
    else:
        _REACHED[name] = _REACHED.get(name, 0) + 1
        reached = _REACHED[name]
    if reached >= int(spec.split(":", 1)[1]):
        os.killpg(int(os.environ.get(FAULT_GROUP_ENV) or os.getpgrp()), signal.SIGKILL)
        # A worker outside that group (Ray's run in groups of their own) dies too: the crash is its own,
        # and it must not go on to finish its unit.
        os.kill(os.getpid(), signal.SIGKILL)
