"""The group step's writers, engine-neutral: one shard per bucket of complete groups, one error file per input.

  fuse_and_write(plan, bucket, parts, statistic)  one shard: the fusion over whole groups (with its job
                                                  statistic, HERO's sigma_bar), then an atomic write
  write_errors(plan, file_index, parts)           one errors/part-FFFFF.parquet per input file
Both are deterministic functions of their parts (rows come out sorted), so a rerun writes the same bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import pyarrow as pa

from pipeline.storage import checkpoints, fsio
from pipeline.storage.faults import fault_point
from pipeline.stages.group import load_parts
from pipeline.stages.base import MetricsSink, PlanView, release_memory, timed
from schemas.rollouts import ORDER, error_records, split_duplicates
from transforms.pairs import make_pairs


def shard_url(plan: PlanView, bucket: int) -> str:
    return fsio.join(plan.config.output, "data", f"part-{bucket:05d}-of-{plan.num_shards:05d}.parquet")


def pairs_url(plan: PlanView, bucket: int) -> str:
    return fsio.join(plan.config.output, "pairs", f"part-{bucket:05d}-of-{plan.num_shards:05d}.parquet")


def fuse_and_write(plan: PlanView, bucket: int, parts: Iterable, statistic,
                   sink: MetricsSink) -> tuple[str, int]:
    """The plan's fusion over one bucket of complete groups (with the job `statistic`: HERO's sigma_bar),
    written as data/part-BBBBB-of-SSSSS.parquet.

    `parts` are spill-file URLs or Arrow tables holding every row of the bucket. Rows come out sorted
    by (prompt_id, input order), so the shard is the same whatever order the parts arrived in.
    """
    url = shard_url(plan, bucket)
    if checkpoints.shard_done(url):  # written before a crash (atomically, so complete); same bytes again
        sink.count("shards_kept", 1)
        return url, 0
    try:
        return _fuse_and_write(plan, bucket, parts, statistic, sink, url)
    finally:
        release_memory()


def _fuse_and_write(plan: PlanView, bucket: int, parts: Iterable, statistic, sink: MetricsSink,
                    url: str) -> tuple[str, int]:
    schema = plan.output_schema
    with timed(sink, "group"):
        table = load_parts(parts)
        table = _drop_duplicates(plan, bucket, table, sink)
    with timed(sink, "fuse"):
        fused = plan.fusion.fuse(table, statistic).drop_columns([ORDER])
        fused = fused.select(schema.names).cast(schema)
    fault_point("write")
    if plan.config.pairs.enabled:  # before the shard: a written shard means its pairs are written too
        with timed(sink, "pairs"):
            pairs, no_pair = make_pairs(fused, plan.config.pairs, plan.fusion.reward_column)
            fsio.write_parquet_atomic(pairs, pairs_url(plan, bucket),
                                    {"pairs": dataclasses.asdict(plan.config.pairs), "no_pair": no_pair,
                                     "shard": bucket})
        sink.count("pairs", pairs.num_rows)
    with timed(sink, "write"):
        metadata = {**plan.metadata, **plan.fusion.shard_metadata(statistic), "shard": bucket}
        fsio.write_parquet_atomic(fused, url, metadata)
    sink.count("written", fused.num_rows)
    return url, fused.num_rows


def _drop_duplicates(plan: PlanView, bucket: int, table: pa.Table, sink: MetricsSink) -> pa.Table:
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
    fsio.write_parquet_atomic(errors.sort_by([("source_file", "ascending"), ("source_row", "ascending")]),
                            fsio.join(plan.config.output, "errors", f"part-dup-{bucket:05d}.parquet"))
    sink.count("errors", errors.num_rows)
    return kept


def write_errors(plan: PlanView, file_index: int, parts: Iterable) -> tuple[str, int]:
    """All error records of one input file, written as errors/part-FFFFF.parquet sorted by source row."""
    errors = load_parts(parts).sort_by("source_row")
    url = fsio.join(plan.config.output, "errors", f"part-{file_index:05d}.parquet")
    fsio.write_parquet_atomic(errors, url)
    return url, errors.num_rows
