"""Fault injection for the resume tests: kill this process's whole group at a named point, as a crash would."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "HEROLABEL_FAULT_AT"
# The process group a fault kills, when the engine runs work in processes of another group (Ray's workers):
# set by the engine on the driver, inherited by its workers, so a fault anywhere kills the whole run.
FAULT_GROUP_ENV = "HEROLABEL_FAULT_GROUP"
FAULT_POINTS = ("verify", "score", "group", "write")
_REACHED: dict[str, int] = {}


def fault_point(name: str) -> None:
    """With HEROLABEL_FAULT_AT=NAME:N, the N-th time point NAME is reached in a process, SIGKILL this
    process's whole group (as a crash or an OOM killer would). Unset (always, outside tests): nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not spec.startswith(f"{name}:"):
        return
    _REACHED[name] = _REACHED.get(name, 0) + 1
    if _REACHED[name] >= int(spec.split(":", 1)[1]):
        os.killpg(int(os.environ.get(FAULT_GROUP_ENV) or os.getpgrp()), signal.SIGKILL)
