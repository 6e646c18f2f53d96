"""Engine adapters. Each exposes run(plan, show_progress) -> {"name", "counters", "wall_s", ...} and only
places the engine-neutral stages (pipeline/stages.py, buckets.py, outputs.py) on workers."""

from __future__ import annotations

import importlib

from pipeline.config import ENGINES


def run_engine(plan, show_progress: bool) -> dict:
    """Runs `plan` on the engine its config names (imported only when chosen)."""
    name = plan.config.engine.engine
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {ENGINES}")
    return importlib.import_module(f"pipeline.engines.{name}").run(plan, show_progress)
