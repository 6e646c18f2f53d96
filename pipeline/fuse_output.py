"""`herolabel fuse OUTPUT --fusion MODE [options] --output NEW`: another fusion of a labelled output, without
verifying or scoring a row again.

A labelled output holds every verdict and score a fusion reads, and its shards are hash buckets of whole
prompt groups, so a fusion runs shard by shard: the job statistic (HERO's sigma_bar) from each shard's
columns, then each shard fused and written under the same name, with the shard metadata a full run with
those settings writes (the source's settings, the fusion's replaced). data/ and pairs/ equal that run's
byte for byte; errors/ is copied as it is (a fusion sends no row there).

Memory: one shard (--rows-per-shard rows, 50,000 by default) at a time. Speed: reading, fusing and
writing Parquet, about 2 microseconds per row and column read; no engine, no spill.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import _SECTIONS, OPTIONS_BY_NAME, ConfigError, PipelineConfig, name_options
from pipeline.outputs.card import write_dataset_card
from pipeline.outputs.manifest import ErrorBudgetExceeded, error_budget, summarize_output, summarize_pairs
from pipeline.outputs.report import write_report
from pipeline.stages.base import CounterSink
from pipeline.stages.write import fuse_and_write
from pipeline.storage import fsio
from pipeline.tools import progress
from schemas.rollouts import ORDER, RM_STATUSES, SAMPLE_INDEX, VERIFIER_STATUSES
from transforms.fuse import Fusion, job_statistic
from transforms.rm import RewardModelConfig
from transforms.rm.signals import RewardSignal

# Options `herolabel fuse` takes: the fusion's, and the DPO pairs' (pairs rank by the fusion's reward).
FUSE_SECTIONS = ("hero", "gdpo", "ensemble", "posterior", "pairs")
FUSE_PIPELINE_OPTIONS = ("fusion", "fusion_rm")
SHARD_NAME = re.compile(r"part-(\d{5})-of-(\d{5})\.parquet$")


def fuse_options() -> list:
    """The options `herolabel fuse` accepts (the rest are the source run's and stay as they were)."""
    return [known for known in OPTIONS_BY_NAME.values()
            if known.section in FUSE_SECTIONS or known.name in FUSE_PIPELINE_OPTIONS]


def config_from_dict(data: dict) -> PipelineConfig:
    """The PipelineConfig a manifest's `config` (PipelineConfig.to_dict()) was written from."""
    def build(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"the source manifest's config has settings this version does not know: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    values = dict(data)
    sections = {name: build(cls, values.pop(name, {})) for name, cls in _SECTIONS.items() if name != "pipeline"}
    signals = tuple(RewardSignal(s["name"], build(RewardModelConfig, s["config"])) for s in values.pop("rm_signals", []))
    values["beam_args"] = tuple(values.get("beam_args", ()))
    try:
        return PipelineConfig(**sections, rm_signals=signals, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(name_options(str(exc))) from exc


def with_options(config: PipelineConfig, options: dict) -> PipelineConfig:
    """`config` with the given fuse options (name -> value, None = keep the source's) replaced."""
    allowed = {known.name: known for known in fuse_options()}
    changes: dict[str, dict] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name not in allowed:
            raise ConfigError(f"herolabel fuse does not take --{name.replace('_', '-')}: it changes the fusion, "
                              f"not the verdicts or scores (run the pipeline again for that)")
        known = allowed[name]
        changes.setdefault(known.section, {})[known.attribute] = value
    if options.get("fusion") == "gdpo" and options.get("rm_ensemble") is None:
        changes.setdefault("ensemble", {})["mode"] = "none"  # gdpo takes each signal on its own
    try:
        sections = {name: dataclasses.replace(getattr(config, name), **values)
                    for name, values in changes.items() if name != "pipeline"}
        return dataclasses.replace(config, **sections, **changes.get("pipeline", {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(name_options(str(exc))) from exc


@dataclass(frozen=True)
class FuseView:
    """What the shard writer reads of a run (pipeline/stages/base.py PlanView), for a fuse of an output."""

    config: PipelineConfig
    metadata: dict
    num_shards: int
    fusion: Fusion
    output_schema: pa.Schema
    has_sample_index: bool
    input_rows: int  # the source run's (its data rows and its error rows)
    files: tuple = ()
    contract: object = None
    layout: object = None
    spill_dir: str = ""


def _read_json(url: str) -> dict:
    with fsspec.open(url, "r") as handle:
        return json.load(handle)


def _read_shard(url: str, columns: list[str] | None = None) -> pa.Table:
    with fsspec.open(url, "rb") as handle:
        table = pq.read_table(handle, columns=columns)
    # Shards are sorted by (prompt_id, input order): the row position restores that order for the fusion.
    return table.append_column(ORDER, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _with_fusion_signal(table: pa.Table, name: str | None) -> pa.Table:
    """rm_score / rm_status from the named signal's columns (what a run with --fusion-rm NAME writes)."""
    if name is None:
        return table
    for column in ("rm_score", "rm_status"):
        if column not in table.schema.names:
            continue
        position = table.schema.get_field_index(column)
        table = table.set_column(position, table.schema.field(column), table.column(f"{column}__{name}"))
    return table


def fuse_output(source: str, output: str, options: dict, overwrite: bool = False,
                show_progress: bool | None = None) -> dict:
    """Fuses the labelled output `source` again with `options` (fusion and pairs settings) into `output`;
    returns its manifest (also written to OUTPUT/manifest.json). Progress (rows written) goes to stderr
    when it is a terminal, or when show_progress says so."""
    started = time.monotonic()
    source = source.rstrip("/")
    fs, source_path = fsspec.core.url_to_fs(source)
    if not fs.exists(f"{source_path}/manifest.json"):
        raise FileNotFoundError(f"{source} holds no finished herolabel output (no manifest.json)")
    if fsspec.core.url_to_fs(output)[1].rstrip("/") == source_path.rstrip("/"):
        raise ValueError(f"--output {output} is the output being fused; choose another directory")
    manifest = _read_json(fsio.join(source, "manifest.json"))
    if not manifest.get("accounted", False):
        raise ValueError(f"{source}: its manifest says rows went missing ({manifest.get('failure')}); run it again")
    old = config_from_dict(manifest["config"])
    config = dataclasses.replace(with_options(old, options), output=output, overwrite=overwrite)
    old_fusion, fusion = old.make_fusion(), config.make_fusion()
    shards = sorted(fs.glob(f"{source_path}/data/part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{source}/data holds no shards")
    numbered = [SHARD_NAME.search(path) for path in shards]
    num_shards = int(numbered[0].group(2))
    _prepare(output, overwrite, config.pairs.enabled)

    first = fsio.read_file_metadata(fs.unstrip_protocol(shards[0]))
    with fs.open(shards[0], "rb") as handle:
        schema = pq.read_schema(handle)
    old_fields = {f.name for f in old_fusion.fields}
    base = [f for f in schema if f.name not in old_fields]
    output_schema = pa.schema(base + list(fusion.fields))
    signal = config.fusion_signal
    metadata = {key: first[key] for key in ("herolabel_version", "reward_model", "reward_models", "fusion_rm",
                                            "layout") if key in first}
    metadata["config"] = config.labeling_dict()
    if signal is not None:
        metadata["reward_model"] = first["reward_models"][signal]
        metadata["fusion_rm"] = signal
    view = FuseView(config, metadata, num_shards, fusion, output_schema, SAMPLE_INDEX in schema.names,
                    manifest["input_rows"])
    urls = [fs.unstrip_protocol(path) for path in shards]
    # The columns the fusion's partials read (and the signal rm_score comes from), a pass at a time.
    columns = [c for c in fusion.partial_columns if c != ORDER]
    columns = list(dict.fromkeys(columns + [f"{c}__{signal}" for c in columns
                                            if signal and c in ("rm_score", "rm_status")]))
    statistic = job_statistic(fusion, lambda earlier: [
        fusion.partial(_with_fusion_signal(_read_shard(url, columns), signal), earlier) for url in urls])
    sink = CounterSink()
    enabled = sys.stderr.isatty() if show_progress is None else show_progress
    with progress.ProgressDisplay(manifest["output_rows"], enabled=enabled):
        for url, match in zip(urls, numbered):
            table = _with_fusion_signal(_read_shard(url).drop_columns(sorted(old_fields & set(schema.names))), signal)
            _, rows = fuse_and_write(view, int(match.group(1)), [table], statistic, sink)
            progress.add("written", rows)
    for path in sorted(fs.glob(f"{source_path}/errors/part-*.parquet")):  # as they are (any two filesystems)
        with fsio.open_atomic(fsio.join(output, "errors", path.rsplit("/", 1)[1])) as handle:
            handle.write(fs.cat_file(path))
    return _finish(view, manifest, old_fusion, source, sink.counts, started)


def _prepare(output: str, overwrite: bool, pairs: bool) -> None:
    fs, path = fsspec.core.url_to_fs(output)
    if fs.exists(path) and fs.ls(path):
        if not overwrite:
            raise FileExistsError(f"--output {output} is not empty; pass --overwrite to replace it or choose "
                                  "another directory")
        fs.rm(path, recursive=True)
    for name in ("data", "errors") + (("pairs",) if pairs else ()):
        fs.makedirs(f"{path}/{name}", exist_ok=True)


def _finish(view: FuseView, source_manifest: dict, old_fusion: Fusion, source: str, counts: dict,
            started: float) -> dict:
    """The new output's manifest: the source's, with what the fusion decides read back from the new files."""
    config, fusion = view.config, view.fusion
    vocabularies = {"verifier_status": VERIFIER_STATUSES, "rm_status": RM_STATUSES, **fusion.statuses}
    summary = summarize_output(config.output, vocabularies)
    old_keys = set(old_fusion.manifest({}))
    manifest = {k: v for k, v in source_manifest.items() if k not in old_keys}
    budget = error_budget(view, summary)
    failure = (f"more input rows failed than --max-error-rate allows ({budget['failed_rows']}, as in the source "
               f"run {source})") if budget["exceeded"] else None
    manifest.update({
        "status": "failed" if failure else "complete", "failure": failure,
        "output_rows": summary["output_rows"], "error_rows": summary["error_rows"],
        **fusion.manifest(summary["shard_metadata"]),
        "error_budget": budget, "fusion": fusion.describe(),
        "status_counts": summary["status_counts"], "error_reasons": summary["error_reasons"],
        "data_files": summary["data_files"], "error_files": summary["error_files"],
        "reward_model": view.metadata["reward_model"],
        "rm_rows": {"scored": 0, "cached": 0},  # this run's: fuse scores nothing
        "fused_from": {"output": source, "fusion": (source_manifest.get("fusion") or {}).get("name", "hero")},
        "engine": {"engine": "fuse", "counters": counts, "wall_s": round(time.monotonic() - started, 3)},
        "wall_s": round(time.monotonic() - started, 3),
        "config": config.to_dict(),
    })
    if config.rm_signals:
        manifest["fusion_rm"] = config.fusion_signal
        manifest["rm_rows_by_signal"] = {name: {"scored": 0, "cached": 0} for name in manifest.get("rm_rows_by_signal", {})}
        manifest["rm_switches"] = {"count": 0, "seconds": 0.0}
    if config.pairs.enabled:
        manifest["pairs"] = summarize_pairs(config.output)
    else:
        manifest.pop("pairs", None)
    if summary["output_rows"] != source_manifest["output_rows"]:
        raise RuntimeError(f"fused {summary['output_rows']} rows of {source_manifest['output_rows']}")
    write_report(config.output, manifest)
    write_dataset_card(config.output, manifest, view.output_schema, config.pairs.enabled, fusion.column_notes)
    with fsio.open_atomic(fsio.join(config.output, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)
    if failure:
        raise ErrorBudgetExceeded(failure)
    return manifest
