"""Driver: plan, prepare the output directory, run the chosen engine, account for every row."""

from __future__ import annotations

import logging
import sys
import time

from pipeline.config import PipelineConfig
from pipeline.engines import run_engine
from pipeline.outputs.manifest import AccountingError, finish_run, prepare_output  # noqa: F401 - AccountingError is API
from pipeline.plan import make_plan
from pipeline.storage.content_cache import AUTO_COMPACT_FILES, compact
from pipeline.storage.preflight import check_writable

log = logging.getLogger(__name__)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("herolabel")
    except PackageNotFoundError:
        return "0+unknown"


def run(config: PipelineConfig, show_progress: bool | None = None) -> dict:
    """Runs one labeling job end to end and returns its manifest (also written to OUTPUT/manifest.json).

    Raises AccountingError (after writing the manifest) if any input row is neither in data nor errors.
    """
    started = time.monotonic()
    check_writable(config.output, "--output")  # before the inputs are read (and before staging writes there)
    if config.rm.cache_dir:
        check_writable(config.rm.cache_dir, "--cache-dir")
    plan = make_plan(config, package_version())
    resuming = prepare_output(plan)
    if show_progress is None:
        show_progress = config.progress == "on" or (config.progress == "auto" and sys.stderr.isatty())
    engine = run_engine(plan, show_progress)
    if config.rm.cache_dir:  # a night's new rows wrote a segment per batch: one per unit from here on
        engine["cache_compaction"] = compact(config.rm.cache_dir, AUTO_COMPACT_FILES)
    return finish_run(plan, {**engine, "resumed": resuming}, started)
