"""Everything the job writes, engine-neutral: the output directory, shards, errors, the manifest.

Engines call these bodies from their own tasks or DoFns:
  prepare_output(plan) -> resuming                 driver, before any data moves (pipeline/checkpoints.py)
  spill_errors(plan, unit_name, errors) -> url    a unit's error records, for write_errors to collect
  fuse_and_write(plan, bucket, parts, sigma_bar)  one shard: HERO over whole groups, then an atomic write
  write_errors(plan, file_index, parts)           one errors/part-FFFFF.parquet per input file
  finish_run(plan, engine_report, started)        driver: read back, account for every row, manifest.json
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import checkpoints, io
from pipeline.buckets import load_parts
from pipeline.plan import RunPlan
from pipeline.hf import write_dataset_card
from pipeline.report import write_report
from pipeline.stages import MetricsSink, timed
from schemas.rollouts import ORDER, STATUS_VOCABULARIES, RmStatus, VerifierStatus, error_records, split_duplicates
from transforms.hero import fuse
from transforms.pairs import make_pairs

RUN_ENTRIES = ("data", "errors", "pairs", "_shuffle", "run_report.json", "report.html", "README.md", "manifest.json")


class RunFailed(RuntimeError):
    """The run finished but must not be used; manifest.json (status "failed") says why."""


class AccountingError(RunFailed):
    """Rows went missing or were duplicated: input_rows != output_rows + error_rows."""


class ErrorBudgetExceeded(RunFailed):
    """More input rows failed than --max-error-rate allows."""


# Row outcomes that count against the error budget (no_reference is the data's choice, not a failure).
BUDGET_STATUSES = {
    "verifier_status": (VerifierStatus.TIMEOUT, VerifierStatus.ERROR, VerifierStatus.BAD_REFERENCE),
    "rm_status": (RmStatus.ERROR,),
}


def error_budget(plan: RunPlan, summary: dict) -> dict:
    """How many input rows failed (errors/ rows + failed statuses), the rate, and the dominant reasons."""
    reasons = Counter(summary["error_reasons_all"])
    for column, statuses in BUDGET_STATUSES.items():
        for status in statuses:
            count = summary["status_counts"][column].get(status, 0)
            if count:
                reasons[f"{column}: {status}"] += count
    # A row with both a failed verifier status and a failed RM status counts once.
    failed = summary["error_rows"] + summary["budget_rows"]
    rate = failed / plan.input_rows if plan.input_rows else 0.0
    return {"max_error_rate": plan.config.max_error_rate, "failed_rows": failed, "error_rate": round(rate, 6),
            "exceeded": rate > plan.config.max_error_rate, "dominant_reasons": dict(reasons.most_common(5))}


def prepare_output(plan: RunPlan) -> bool:
    """Readies OUTPUT for this run; returns True when it resumes an unfinished run there.

    A finished run (manifest.json present, complete or failed) is replaced only with --overwrite. An
    unfinished run (its _shuffle/run.json but no manifest) is resumed when its settings are this run's,
    refused (naming what differs) when they are not, and replaced with --overwrite.
    """
    config = plan.config
    fs, path = fsspec.core.url_to_fs(config.output)
    previous = [name for name in RUN_ENTRIES if fs.exists(f"{path}/{name}")]
    resuming = False
    if previous and not config.overwrite:
        if "manifest.json" in previous:
            with fs.open(f"{path}/manifest.json", "r") as handle:
                status = json.load(handle).get("status", "complete")
            raise FileExistsError(f"--output {config.output} already holds a {status} run (manifest.json); pass "
                                  "--overwrite to replace it or choose another directory")
        unfinished = checkpoints.read_fingerprint(config.output)
        if unfinished is None:
            raise FileExistsError(f"--output {config.output} already holds files of a run ({', '.join(previous)}) "
                                  "that cannot be resumed; pass --overwrite to replace them or choose another directory")
        changed = checkpoints.differences(unfinished, checkpoints.fingerprint(plan))
        if changed:
            raise FileExistsError(f"--output {config.output} holds an unfinished run with other settings "
                                  f"(different: {', '.join(changed)}); run again with that run's settings to resume "
                                  "it, or pass --overwrite to start over")
        resuming = True
    if not resuming:
        for name in previous:
            fs.rm(f"{path}/{name}", recursive=True)
        checkpoints.write_fingerprint(plan)
    for name in ("data", "errors") + (("pairs",) if config.pairs.enabled else ()):  # present even when empty
        fs.makedirs(f"{path}/{name}", exist_ok=True)
    return resuming


def shard_url(plan: RunPlan, bucket: int) -> str:
    return io.join(plan.config.output, "data", f"part-{bucket:05d}-of-{plan.num_shards:05d}.parquet")


def pairs_url(plan: RunPlan, bucket: int) -> str:
    return io.join(plan.config.output, "pairs", f"part-{bucket:05d}-of-{plan.num_shards:05d}.parquet")


def summarize_pairs(output: str) -> dict:
    """Rows and files under OUTPUT/pairs/, and prompts without a pair by reason (from each file's metadata,
    so a resumed run counts the shards it kept too)."""
    fs, path = fsspec.core.url_to_fs(output)
    files = sorted(fs.glob(f"{path}/pairs/part-*.parquet"))
    rows, reasons = 0, Counter()
    for name in files:
        with fs.open(name, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            rows += parquet.metadata.num_rows
            meta = json.loads((parquet.schema_arrow.metadata or {}).get(io.METADATA_KEY, b"{}"))
        reasons.update(meta.get("no_pair", {}))
    return {"rows": rows, "files": [io.as_url(fs, f, output) for f in files],
            "prompts_without_pair": dict(reasons)}


def fuse_and_write(plan: RunPlan, bucket: int, parts: Iterable, sigma_bar: float | None,
                   sink: MetricsSink) -> tuple[str, int]:
    """HERO fusion of one bucket of complete groups, written as data/part-BBBBB-of-SSSSS.parquet.

    `parts` are spill-file URLs or Arrow tables holding every row of the bucket. Rows come out sorted
    by (prompt_id, input order), so the shard is the same whatever order the parts arrived in.
    """
    url = shard_url(plan, bucket)
    if checkpoints.shard_done(url):  # written before a crash (atomically, so complete); same bytes again
        sink.count("shards_kept", 1)
        return url, 0
    schema = plan.contract.output_schema()
    with timed(sink, "group"):
        table = load_parts(parts)
        table = _drop_duplicates(plan, bucket, table, sink)
    with timed(sink, "fuse"):
        fused = fuse(table, plan.config.hero, sigma_bar).drop_columns([ORDER])
        fused = fused.select(schema.names).cast(schema)
    checkpoints.fault_point("write")
    if plan.config.pairs.enabled:  # before the shard: a written shard means its pairs are written too
        with timed(sink, "pairs"):
            pairs, no_pair = make_pairs(fused, plan.config.pairs)
            io.write_parquet_atomic(pairs, pairs_url(plan, bucket),
                                    {"pairs": dataclasses.asdict(plan.config.pairs), "no_pair": no_pair,
                                     "shard": bucket})
        sink.count("pairs", pairs.num_rows)
    with timed(sink, "write"):
        io.write_parquet_atomic(fused, url, {**plan.metadata, "sigma_bar": sigma_bar, "shard": bucket})
    sink.count("written", fused.num_rows)
    return url, fused.num_rows


def _drop_duplicates(plan: RunPlan, bucket: int, table: pa.Table, sink: MetricsSink) -> pa.Table:
    """Later copies of a (prompt_id, sample_index) go to errors/part-dup-BBBBB.parquet; the first is kept."""
    kept, duplicates, originals = split_duplicates(table)
    if not len(duplicates):
        return kept
    orders = table.column(ORDER).to_numpy()
    urls = [f.url for f in plan.files]

    def source(position: int) -> tuple[str, int]:
        order = int(orders[position])
        return urls[order >> 32], order & 0xFFFFFFFF

    sources = [source(p) for p in duplicates]
    reasons = ["duplicate (prompt_id, sample_index) of {} row {}".format(*source(p)) for p in originals]
    errors = error_records(table, duplicates, reasons, "group", [f for f, _ in sources], [r for _, r in sources])
    io.write_parquet_atomic(errors.sort_by([("source_file", "ascending"), ("source_row", "ascending")]),
                            io.join(plan.config.output, "errors", f"part-dup-{bucket:05d}.parquet"))
    sink.count("errors", errors.num_rows)
    return kept


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
    output_rows = budget_rows = 0
    for file in data_files:
        with fs.open(file, "rb") as handle:
            table = pq.read_table(handle, columns=list(statuses))
        output_rows += table.num_rows
        for name in statuses:
            for entry in table.column(name).value_counts().to_pylist():
                statuses[name][entry["values"]] += entry["counts"]
        failed = None
        for name, values in BUDGET_STATUSES.items():
            hit = pc.is_in(table.column(name), value_set=pa.array(values))
            failed = hit if failed is None else pc.or_(failed, hit)
        budget_rows += pc.sum(pc.cast(pc.fill_null(failed, False), pa.int64())).as_py() or 0
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
        "error_reasons_all": dict(reasons),
        "budget_rows": budget_rows,
        "data_files": [io.as_url(fs, f, output) for f in data_files],
        "error_files": [io.as_url(fs, f, output) for f in error_files],
    }


def finish_run(plan: RunPlan, engine: dict, started: float) -> dict:
    """Reads the output back, writes manifest.json (atomically; it marks the run finished), then removes
    the spill files and checkpoints, and returns the manifest.

    The manifest's status is "complete", or "failed" with the reason; for a failed run this raises
    AccountingError (an input row is neither in data nor errors) or ErrorBudgetExceeded after writing
    it. A status outside the vocabularies in schemas/ raises before the manifest is written.
    """
    config = plan.config
    summary = summarize_output(config.output)
    accounted = plan.input_rows == summary["output_rows"] + summary["error_rows"]
    budget = error_budget(plan, summary)
    failure = None
    if not accounted:
        failure = AccountingError(f"input_rows {plan.input_rows} != output_rows {summary['output_rows']} + "
                                  f"error_rows {summary['error_rows']}; see {config.output}/manifest.json")
    elif budget["exceeded"]:
        reasons = "; ".join(f"{reason} ({count})" for reason, count in budget["dominant_reasons"].items())
        failure = ErrorBudgetExceeded(
            f"{budget['failed_rows']} of {plan.input_rows} input rows failed ({budget['error_rate']:.2%}), more than "
            f"--max-error-rate {plan.config.max_error_rate} allows; everything is written under {config.output} "
            f"(data/, errors/, manifest.json). Most common: {reasons}")
    manifest = {
        "status": "failed" if failure else "complete",
        "failure": str(failure) if failure else None,
        "input_rows": plan.input_rows,
        **{k: summary[k] for k in ("output_rows", "error_rows", "sigma_bar")},
        "accounted": accounted,
        "error_budget": budget,
        "sigma_bar_source": {"none": "none (rm backend none)", "fixed": "fixed",
                             "job_mean": "mean of sigma_u over the job's groups"}[plan.sigma_mode],
        **{k: summary[k] for k in ("status_counts", "error_reasons")},
        "input_files": [f.url for f in plan.files],
        "data_files": summary["data_files"],
        "error_files": summary["error_files"],
        "num_shards": plan.num_shards,
        "reward_model": plan.metadata["reward_model"],
        # This run's rows by how they got their score (a resumed run counts only what it did itself).
        "rm_rows": {"scored": int(engine.get("counters", {}).get("rm_scored", 0)),
                    "cached": int(engine.get("counters", {}).get("rm_cached", 0))},
        "herolabel_version": plan.metadata["herolabel_version"],
        **({"pairs": summarize_pairs(config.output)} if config.pairs.enabled else {}),
        "engine": {**engine, "wall_s": round(engine["wall_s"], 3)},
        "wall_s": round(time.monotonic() - started, 3),
        "config": config.to_dict(),
    }
    write_report(config.output, manifest)  # these before the manifest, which marks the run finished
    write_dataset_card(config.output, manifest, plan.contract.output_schema(), config.pairs.enabled)
    with io.open_atomic(io.join(config.output, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)
    # Only now that the manifest marks the run finished: a crash during this clean-up leaves a finished run
    # (and some spill files that --overwrite removes), never an unfinished run without its checkpoints.
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.exists(f"{path}/_shuffle"):
        fs.rm(f"{path}/_shuffle", recursive=True)
    if failure is not None:
        raise failure
    return manifest
