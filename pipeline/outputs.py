"""Everything the job writes, engine-neutral: the output directory, shards, errors, the manifest.

Engines call these bodies from their own tasks or DoFns:
  prepare_output(config)                          driver, before any data moves
  spill_errors(plan, unit_name, errors) -> url    a unit's error records, for write_errors to collect
  fuse_and_write(plan, bucket, parts, sigma_bar)  one shard: HERO over whole groups, then an atomic write
  write_errors(plan, file_index, parts)           one errors/part-FFFFF.parquet per input file
  finish_run(plan, engine_report, started)        driver: read back, account for every row, manifest.json
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from pipeline.buckets import load_parts
from pipeline.config import PipelineConfig
from pipeline.plan import RunPlan
from pipeline.stages import MetricsSink, timed
from schemas.rollouts import ORDER, STATUS_VOCABULARIES
from transforms.hero import fuse

RUN_ENTRIES = ("data", "errors", "_shuffle", "manifest.json")


class AccountingError(RuntimeError):
    """Rows went missing or were duplicated: input_rows != output_rows + error_rows."""


def prepare_output(config: PipelineConfig) -> None:
    """Refuses to mix runs in one directory unless overwrite is set; then clears the previous run."""
    fs, path = fsspec.core.url_to_fs(config.output)
    previous = [name for name in RUN_ENTRIES if fs.exists(f"{path}/{name}")]
    if previous and not config.overwrite:
        raise FileExistsError(f"--output {config.output} already holds a run ({', '.join(previous)}); "
                              "pass --overwrite to replace it or choose another directory")
    for name in previous:
        fs.rm(f"{path}/{name}", recursive=True)
    for name in ("data", "errors"):  # present even when a run writes no shard there
        fs.makedirs(f"{path}/{name}", exist_ok=True)


def shard_url(plan: RunPlan, bucket: int) -> str:
    return io.join(plan.config.output, "data", f"part-{bucket:05d}-of-{plan.num_shards:05d}.parquet")


def fuse_and_write(plan: RunPlan, bucket: int, parts: Iterable, sigma_bar: float | None,
                   sink: MetricsSink) -> tuple[str, int]:
    """HERO fusion of one bucket of complete groups, written as data/part-BBBBB-of-SSSSS.parquet.

    `parts` are spill-file URLs or Arrow tables holding every row of the bucket. Rows come out sorted
    by (prompt_id, input order), so the shard is the same whatever order the parts arrived in.
    """
    schema = plan.contract.output_schema()
    with timed(sink, "group"):
        table = load_parts(parts)
    with timed(sink, "fuse"):
        fused = fuse(table, plan.config.hero, sigma_bar).drop_columns([ORDER])
        fused = fused.select(schema.names).cast(schema)
    url = shard_url(plan, bucket)
    with timed(sink, "write"):
        io.write_parquet_atomic(fused, url, {**plan.metadata, "sigma_bar": sigma_bar, "shard": bucket})
    sink.count("written", fused.num_rows)
    return url, fused.num_rows


def spill_errors(plan: RunPlan, unit_name: str, errors: pa.Table) -> str:
    """Writes one unit's error records under _shuffle/errors/ (atomically; a rerun rewrites them)."""
    return io.write_parquet_atomic(errors, io.join(plan.spill_dir, "errors", f"{unit_name}.parquet"))


def write_errors(plan: RunPlan, file_index: int, parts: Iterable) -> tuple[str, int]:
    """All error records of one input file, written as errors/part-FFFFF.parquet sorted by source row."""
    errors = load_parts(parts).sort_by("source_row")
    url = io.join(plan.config.output, "errors", f"part-{file_index:05d}.parquet")
    io.write_parquet_atomic(errors, url)
    return url, errors.num_rows


def _parquet_files(fs, directory: str) -> list[str]:
    return sorted(p for p in fs.glob(f"{directory}/part-*.parquet"))


def summarize_output(output: str) -> dict:
    """Row counts and per-status counts read back from the written files (the ground truth)."""
    fs, path = fsspec.core.url_to_fs(output)
    data_files = _parquet_files(fs, f"{path}/data")
    error_files = _parquet_files(fs, f"{path}/errors")
    statuses = {name: Counter() for name in STATUS_VOCABULARIES}
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
    outside = {name: sorted(set(counts) - set(STATUS_VOCABULARIES[name]), key=str)
               for name, counts in statuses.items() if set(counts) - set(STATUS_VOCABULARIES[name])}
    if outside:
        raise AccountingError(f"status values outside the vocabulary in schemas/: {outside}")
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


def finish_run(plan: RunPlan, engine: dict, started: float) -> dict:
    """Reads the output back, removes spill files, writes manifest.json (atomically) and returns it.

    Raises AccountingError (after writing the manifest) if any input row is neither in data nor errors;
    a status outside the vocabularies in schemas/ raises before the manifest is written.
    """
    config = plan.config
    summary = summarize_output(config.output)
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.exists(f"{path}/_shuffle"):
        fs.rm(f"{path}/_shuffle", recursive=True)
    manifest = {
        "input_rows": plan.input_rows,
        **{k: summary[k] for k in ("output_rows", "error_rows", "sigma_bar")},
        "accounted": plan.input_rows == summary["output_rows"] + summary["error_rows"],
        "sigma_bar_source": {"none": "none (rm backend none)", "fixed": "fixed",
                             "job_mean": "mean of sigma_u over the job's groups"}[plan.sigma_mode],
        **{k: summary[k] for k in ("status_counts", "error_reasons")},
        "input_files": [f.url for f in plan.files],
        "data_files": summary["data_files"],
        "error_files": summary["error_files"],
        "num_shards": plan.num_shards,
        "reward_model": plan.metadata["reward_model"],
        "herolabel_version": plan.metadata["herolabel_version"],
        "engine": {**engine, "wall_s": round(engine["wall_s"], 3)},
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
