"""The run's output directory on the driver: prepared before any data moves, read back and accounted for after.

  prepare_output(plan) -> resuming                 before any data moves (pipeline/storage/checkpoints.py)
  finish_run(plan, engine_report, started)        read back, account for every row, manifest.json, report, card
Shards and error files are written by the group step on workers (pipeline/stages/write.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import checkpoints, fsio
from pipeline.plan import RunPlan
from pipeline.outputs.card import write_dataset_card
from pipeline.outputs.report import write_report
from schemas.rollouts import RM_STATUSES, VERIFIER_STATUSES, RmStatus, VerifierStatus

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
        changed = checkpoints.differences(unfinished, plan.fingerprint())
        if changed:
            raise FileExistsError(f"--output {config.output} holds an unfinished run with other settings "
                                  f"(different: {', '.join(changed)}); run again with that run's settings to resume "
                                  "it, or pass --overwrite to start over")
        resuming = True
    if not resuming:
        for name in previous:
            fs.rm(f"{path}/{name}", recursive=True)
        checkpoints.write_fingerprint(plan.spill_dir, plan.fingerprint())
    for name in ("data", "errors") + (("pairs",) if config.pairs.enabled else ()):  # present even when empty
        fs.makedirs(f"{path}/{name}", exist_ok=True)
    return resuming


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
            meta = json.loads((parquet.schema_arrow.metadata or {}).get(fsio.METADATA_KEY, b"{}"))
        reasons.update(meta.get("no_pair", {}))
    return {"rows": rows, "files": [fsio.as_url(fs, f, output) for f in files],
            "prompts_without_pair": dict(reasons)}


def _parquet_files(fs, directory: str) -> list[str]:
    return sorted(p for p in fs.glob(f"{directory}/part-*.parquet"))


def summarize_output(output: str, vocabularies: dict[str, tuple[str, ...]]) -> dict:
    """Row counts and per-status counts (status column -> vocabulary) read back from the written files
    (the ground truth), and the first shard's metadata."""
    fs, path = fsspec.core.url_to_fs(output)
    data_files = _parquet_files(fs, f"{path}/data")
    error_files = _parquet_files(fs, f"{path}/errors")
    statuses = {name: Counter() for name in vocabularies}
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
    outside = {name: sorted(set(counts) - set(vocabularies[name]), key=str)
               for name, counts in statuses.items() if set(counts) - set(vocabularies[name])}
    if outside:
        raise AccountingError(f"status values outside the vocabulary in schemas/: {outside}")
    shard_metadata = fsio.read_file_metadata(fs.unstrip_protocol(data_files[0])) if data_files else {}
    return {
        "output_rows": output_rows,
        "error_rows": error_rows,
        "shard_metadata": shard_metadata,
        "status_counts": {name: dict(sorted(c.items(), key=lambda kv: str(kv[0]))) for name, c in statuses.items()},
        "error_reasons": dict(reasons.most_common(20)),
        "error_reasons_all": dict(reasons),
        "budget_rows": budget_rows,
        "data_files": [fsio.as_url(fs, f, output) for f in data_files],
        "error_files": [fsio.as_url(fs, f, output) for f in error_files],
    }


def finish_run(plan: RunPlan, engine: dict, started: float) -> dict:
    """Reads the output back, writes manifest.json (atomically; it marks the run finished), then removes
    the spill files and checkpoints, and returns the manifest.

    The manifest's status is "complete", or "failed" with the reason; for a failed run this raises
    AccountingError (an input row is neither in data nor errors) or ErrorBudgetExceeded after writing
    it. A status outside the vocabularies in schemas/ raises before the manifest is written.
    """
    config = plan.config
    fusion = plan.fusion
    vocabularies = {"verifier_status": VERIFIER_STATUSES, "rm_status": RM_STATUSES, **fusion.statuses}
    summary = summarize_output(config.output, vocabularies)
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
        **{k: summary[k] for k in ("output_rows", "error_rows")},
        **fusion.manifest(summary["shard_metadata"]),
        "accounted": accounted,
        "error_budget": budget,
        "fusion": fusion.describe(),
        **{k: summary[k] for k in ("status_counts", "error_reasons")},
        "input_files": [f.url for f in plan.files],
        "data_files": summary["data_files"],
        "error_files": summary["error_files"],
        "num_shards": plan.num_shards,
        "reward_model": plan.metadata["reward_model"],
        # This run's rows by how they got their verdict and score (a resumed run counts only what it did itself).
        "verifier_rows": {"verified": int(engine.get("counters", {}).get("verified", 0)),
                          "cached": int(engine.get("counters", {}).get("verifier_cached", 0))},
        "rm_rows": {"scored": int(engine.get("counters", {}).get("rm_scored", 0)),
                    "cached": int(engine.get("counters", {}).get("rm_cached", 0))},
        **_signals_section(plan, engine.get("counters", {})),
        **_judge_section(plan, engine.get("counters", {})),
        "herolabel_version": plan.metadata["herolabel_version"],
        **({"pairs": summarize_pairs(config.output)} if config.pairs.enabled else {}),
        "engine": {**engine, "wall_s": round(engine["wall_s"], 3)},
        "wall_s": round(time.monotonic() - started, 3),
        "config": config.to_dict(),
    }
    write_report(config.output, manifest)  # these before the manifest, which marks the run finished
    write_dataset_card(config.output, manifest, plan.output_schema, config.pairs.enabled, fusion.column_notes)
    with fsio.open_atomic(fsio.join(config.output, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)
    # Only now that the manifest marks the run finished: a crash during this clean-up leaves a finished run
    # (and some spill files that --overwrite removes), never an unfinished run without its checkpoints.
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.exists(f"{path}/_shuffle"):
        fs.rm(f"{path}/_shuffle", recursive=True)
    if failure is not None:
        raise failure
    return manifest


def _judge_section(plan, counters: dict) -> dict:
    """With a fallback judge: its identity, template and mode, and this run's rows it was gated on, judged
    and served from its cache (nothing without one)."""
    if "fallback_verifier" not in plan.metadata:
        return {}
    rows = {name: int(counters.get(f"fallback_{name}", 0)) for name in ("gated", "judged", "cached")}
    return {"fallback_verifier": {**plan.metadata["fallback_verifier"], "rows": rows}}


def _signals_section(plan, counters: dict) -> dict:
    """With several reward signals: each one's identity and columns, which one the fusion used, and each
    model's rows scored and served by its cache (nothing with one reward model)."""
    signals = plan.config.rm_signals
    if not signals:
        return {}
    return {
        "fusion_rm": plan.config.fusion_signal,
        "reward_models": {s.name: {**plan.metadata["reward_models"][s.name],
                                   "columns": [s.score_column, s.status_column]} for s in signals},
        "rm_rows_by_signal": {s.name: {"scored": int(counters.get(f"rm_scored__{s.name}", 0)),
                                       "cached": int(counters.get(f"rm_cached__{s.name}", 0))}
                              for s in signals if s.runs_model},
        "rm_switches": {"count": int(counters.get("rm_switches", 0)),
                        "seconds": round(counters.get("rm_switch_ms", 0) / 1000, 3)},
    }
