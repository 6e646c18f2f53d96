"""Grouping by prompt without an engine: bucket rows by prompt hash, spill buckets to Parquet, load them.

A bucket holds whole prompt groups (bucket = crc32(prompt_id) % num_shards), so a group is complete
even when its rows come from different files or workers. Engines move either the Arrow tables
themselves (the runner's shuffle) or only the paths of spill files (flat memory on any engine).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import fsio
from pipeline.stages.base import MetricsSink, timed
from schemas.rollouts import ORDER, PROMPT_ID, SAMPLE_INDEX, bucket_of, split_duplicates


def split_by_bucket(table: pa.Table, num_shards: int) -> Iterator[tuple[int, pa.Table]]:
    """Yields (bucket, rows of that bucket) for the buckets present in `table`, in bucket order."""
    buckets = bucket_of(table.column(PROMPT_ID), num_shards)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        if stop > start:
            yield int(sorted_buckets[start]), table.take(pa.array(order[start:stop]))


def spill_path(spill_dir: str, bucket: int, name: str) -> str:
    return fsio.join(spill_dir, f"bucket-{bucket:05d}", f"{name}.parquet")


class SpillWriter:
    """Appends rows to one Parquet file per bucket, named `name` inside that bucket's directory.

    Rows are buffered per bucket and flushed as row groups once `flush_rows` rows are pending, so
    memory stays bounded whatever the input size. Each file appears under its final name only when
    complete (fsio.open_atomic), so a rerun of the same unit of work (a retried task) can rewrite it
    safely. Cost: one Parquet write (lz4) per row.
    """

    def __init__(self, spill_dir: str, num_shards: int, schema: pa.Schema, name: str, flush_rows: int = 16384):
        self.spill_dir = spill_dir
        self.num_shards = num_shards
        self.schema = schema
        self.name = name
        self.flush_rows = flush_rows
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_rows = 0
        self._writers: dict[int, tuple[str, pq.ParquetWriter]] = {}
        self._files = ExitStack()

    def add(self, table: pa.Table) -> None:
        """Buffers `table`'s rows by bucket (flushing to the files every `flush_rows` rows)."""
        for bucket, rows in split_by_bucket(table, self.num_shards):
            self._pending.setdefault(bucket, []).append(rows)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        for bucket, parts in self._pending.items():
            if bucket not in self._writers:
                url = spill_path(self.spill_dir, bucket, self.name)
                handle = self._files.enter_context(fsio.open_atomic(url))
                self._writers[bucket] = (url, pq.ParquetWriter(handle, self.schema, compression="lz4"))
            self._writers[bucket][1].write_table(pa.concat_tables(parts))
        self._pending = {}
        self._pending_rows = 0

    def close(self) -> dict[int, str]:
        """Flushes and closes every file (each appears under its final name only now); returns
        {bucket: url} in bucket order."""
        self._flush()
        for _, writer in self._writers.values():
            writer.close()
        self._files.close()  # each file appears under its final name
        written = {bucket: url for bucket, (url, _) in sorted(self._writers.items())}
        self._writers = {}
        return written


def load_parts(parts: Iterable, columns: list[str] | None = None) -> pa.Table:
    """One table from spill-file URLs (read in name order) or from Arrow tables (the runner's shuffle)."""
    parts = list(parts)
    if parts and isinstance(parts[0], str):
        tables = []
        for url in sorted(parts):
            with fsspec.open(url, "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        return pa.concat_tables(tables)
    return pa.concat_tables([t.select(columns) if columns else t for t in parts])


def bucket_partial(fusion, parts: Iterable, sink: MetricsSink, has_sample_index: bool):
    """The fusion's partial statistic of one bucket (HERO: sigma_u's sum and count), over the rows fusion
    will keep (later copies of a (prompt_id, sample_index) dropped); reads only the columns it needs.

    With spill files this reads those columns of each bucket once more before fusion reads the whole
    bucket: the job statistic must be complete before any shard is fused, and holding buckets until then
    would make memory grow with the job.
    """
    columns = list(dict.fromkeys(list(fusion.partial_columns) + [PROMPT_ID, ORDER]
                                 + ([SAMPLE_INDEX] if has_sample_index else [])))
    with timed(sink, "sigma"):
        kept, _, _ = split_duplicates(load_parts(parts, columns))
        return fusion.partial(kept)
