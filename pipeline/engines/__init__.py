"""Engines: one module per engine, each exposing run(plan, pending, resumed, show_progress) -> {"name",
"counters", "wall_s", ...}. An engine only places the plan's units and stages on workers; the table of
engines (name -> module, imported only when chosen) is pipeline.config.ENGINES, so that a third engine is
one module and one line there.

The driver, not the engine, finds the units completed before a crash (their markers) and counts them,
the same way on every engine.
"""

from __future__ import annotations

import importlib

from pipeline.config import ENGINES
from pipeline.stages.unit import resumed_unit
from pipeline.storage import checkpoints


def run_engine(plan, show_progress: bool) -> dict:
    """Runs `plan` on the engine its config names; the report says how many units were resumed."""
    name = plan.config.engine.engine
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {tuple(ENGINES)}")
    # Markers exist only with spill files (shuffle=files); engine shuffles cannot resume a unit.
    completed = checkpoints.completed_units(plan.spill_dir) if plan.config.shuffle == "files" else {}
    units = plan.units  # computed from the files on each access
    pending = [unit for unit in units if unit.name not in completed]
    resumed = [resumed_unit(unit.name, unit.file_index, completed[unit.name])
               for unit in units if unit.name in completed]
    report = importlib.import_module(ENGINES[name]).run(plan, pending, resumed, show_progress)
    return {**report, "resumed_units": len(resumed)}
