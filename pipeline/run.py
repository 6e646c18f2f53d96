"""Driver: prepare the output directory, run the engine, then account for every row in manifest.json."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter

import fsspec
import pyarrow.parquet as pq

from pipeline import io
from pipeline.beam_pipeline import make_plan, run_beam
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("herolabel")
    except PackageNotFoundError:
        return "0+unknown"


class AccountingError(RuntimeError):
    """Rows went missing or were duplicated: input_rows != output_rows + error_rows."""


def prepare_output(config: PipelineConfig):
    """Refuses to mix runs in one directory unless overwrite is set; then clears the previous run."""
    fs, path = fsspec.core.url_to_fs(config.output)
    previous = [name for name in ("data", "errors", "_shuffle", "manifest.json") if fs.exists(f"{path}/{name}")]
    if previous and not config.overwrite:
        raise FileExistsError(f"--output {config.output} already holds a run ({', '.join(previous)}); "
                              "pass --overwrite to replace it or choose another directory")
    for name in previous:
        fs.rm(f"{path}/{name}", recursive=True)
    for name in ("data", "errors"):  # present even when a run writes no shard there
        fs.makedirs(f"{path}/{name}", exist_ok=True)


def _parquet_files(fs, directory: str) -> list[str]:
    return sorted(p for p in fs.glob(f"{directory}/part-*.parquet"))


def summarize_output(output: str) -> dict:
    """Row counts and per-status counts read back from the written files (the ground truth)."""
    fs, path = fsspec.core.url_to_fs(output)
    data_files = _parquet_files(fs, f"{path}/data")
    error_files = _parquet_files(fs, f"{path}/errors")
    statuses = {name: Counter() for name in ("verifier_status", "rm_status", "hero_status")}
    output_rows = 0
    for file in data_files:
        with fs.open(file, "rb") as handle:
            table = pq.read_table(handle, columns=list(statuses))
        output_rows += table.num_rows
        for name in statuses:
            for entry in table.column(name).value_counts().to_pylist():
                statuses[name][entry["values"]] += entry["counts"]
    error_rows, reasons = 0, Counter()
    for file in error_files:
        with fs.open(file, "rb") as handle:
            table = pq.read_table(handle, columns=["stage", "reason"])
        error_rows += table.num_rows
        for stage, reason in zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()):
            reasons[f"{stage}: {reason}"] += 1
    sigma_bar = io.read_file_metadata(fs.unstrip_protocol(data_files[0])).get("sigma_bar") if data_files else None
    return {
        "output_rows": output_rows,
        "error_rows": error_rows,
        "sigma_bar": sigma_bar,
        "status_counts": {name: dict(sorted(c.items(), key=lambda kv: str(kv[0]))) for name, c in statuses.items()},
        "error_reasons": dict(reasons.most_common(20)),
        "data_files": [io.as_url(fs, f, output) for f in data_files],
        "error_files": [io.as_url(fs, f, output) for f in error_files],
    }


def run(config: PipelineConfig, show_progress: bool | None = None) -> dict:
    """Runs one labeling job end to end and returns its manifest (also written to OUTPUT/manifest.json).

    Raises AccountingError (after writing the manifest) if any input row is neither in data nor errors.
    """
    started = time.monotonic()
    plan = make_plan(config, package_version())
    prepare_output(config)
    if show_progress is None:
        show_progress = config.progress == "on" or (config.progress == "auto" and sys.stderr.isatty())
    engine = run_beam(plan, show_progress)
    summary = summarize_output(config.output)
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.exists(f"{path}/_shuffle"):
        fs.rm(f"{path}/_shuffle", recursive=True)
    manifest = {
        "input_rows": plan.input_rows,
        **{k: summary[k] for k in ("output_rows", "error_rows", "sigma_bar")},
        "accounted": plan.input_rows == summary["output_rows"] + summary["error_rows"],
        "sigma_bar_source": ("none (rm backend none)" if config.rm.backend == "none" else
                             "fixed" if config.hero.sigma_bar is not None else "mean of sigma_u over the job's groups"),
        **{k: summary[k] for k in ("status_counts", "error_reasons")},
        "input_files": [f.url for f in plan.files],
        "data_files": summary["data_files"],
        "error_files": summary["error_files"],
        "num_shards": plan.num_shards,
        "reward_model": plan.metadata["reward_model"],
        "herolabel_version": plan.metadata["herolabel_version"],
        "engine": {"name": "beam", **engine, "wall_s": round(engine["wall_s"], 3)},
        "wall_s": round(time.monotonic() - started, 3),
        "config": config.to_dict(),
    }
    with fs.open(f"{path}/.manifest.json.tmp", "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)
    fs.mv(f"{path}/.manifest.json.tmp", f"{path}/manifest.json")
    if not manifest["accounted"]:
        raise AccountingError(f"input_rows {plan.input_rows} != output_rows {summary['output_rows']} + "
                              f"error_rows {summary['error_rows']}; see {config.output}/manifest.json")
    return manifest
