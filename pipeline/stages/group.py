"""Grouping by prompt without an engine: bucket rows by prompt hash, spill buckets to Parquet, load them.

A bucket holds whole prompt groups (bucket = crc32(prompt_id) % num_shards), so a group is complete
even when its rows come from different files or workers. Engines move either the Arrow tables
themselves (the runner's shuffle) or only where the spilled rows are (flat memory on any engine).
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.storage import fsio
from pipeline.stages.base import MetricsSink, release_memory, timed
from schemas.rollouts import ORDER, PROMPT_ID, SAMPLE_INDEX, bucket_of, split_duplicates


def split_by_bucket(table: pa.Table, num_shards: int, views: bool = False) -> Iterator[tuple[int, pa.Table]]:
    """Yields (bucket, rows of that bucket) for the buckets present in `table`, in bucket order.

    views=True: zero-copy slices of one copy of `table` in bucket order, for a writer that encodes only the
    slice (Arrow IPC does); a take per bucket cost 0.24 ms each here, 48 ms for a 10k-row unit over 200
    buckets, three times the rest of its spill. Otherwise a compact table per bucket: pickling a slice
    carries its whole parent's buffers (pyarrow 25), and engine shuffles pickle what they move.
    """
    buckets = bucket_of(table.column(PROMPT_ID), num_shards)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    in_order = table.take(pa.array(order)) if views else None
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        if stop > start:
            rows = in_order.slice(start, stop - start) if views else table.take(pa.array(order[start:stop]))
            yield int(sorted_buckets[start]), rows


def spill_url(spill_dir: str, name: str, digest: str) -> str:
    """The object holding unit `name`'s spilled buckets (`digest`: of its content)."""
    return fsio.join(spill_dir, "spill", f"{name}-{digest}.arrows")


# A bucket's piece of a unit's spill object: the object's URL and the piece's byte range [START, END).
SPILL_PART = re.compile(r"^(?P<url>.+)#(?P<start>\d+)-(?P<end>\d+)$")


class SpillWriter:
    """Spills one unit's rows by bucket into one object: each bucket's rows are a complete Arrow IPC
    stream (lz4 buffers, a record batch per `flush_rows` rows buffered), the streams back to back; close()
    uploads it and returns {bucket: "URL#START-END"}. A unit costs one write, and a bucket's fuse task one
    ranged read per unit, instead of an object per unit and bucket (a request each: 200 buckets x 1,220
    units is 245k objects for a 10M-row job at the default --rows-per-shard).

    A bucket reads a part per unit, and its fusion statistic reads them once more, so a job reads units x
    buckets parts twice, a number that grows with the square of the job, and the parts get small (tens of
    rows at 10M rows). So a part is an IPC stream rather than Parquet, and lz4-compressed only when its
    bucket's first batch has COMPRESS_ROWS rows or more: decoding a 50-row part of 20 columns costs about
    17 µs as plain IPC, 150-380 µs as lz4 IPC and 870 µs as Parquet on this machine (lz4's per-buffer frames
    dominate at that size), at about twice lz4's bytes for the small parts only.

    The object is named after the unit and a digest of its content (fsio.open_atomic: it appears whole or
    not at all). A retried task that computes the same rows writes the same object; one whose rows differ
    (scores from other hardware) writes another, so a marker never holds ranges of an object it did not
    describe. Memory: the unit's compressed rows until close (a unit is at most 65,536 rows).
    """

    COMPRESS_ROWS = 4096
    COMPRESSED = ipc.IpcWriteOptions(compression="lz4")
    PLAIN = ipc.IpcWriteOptions()

    def __init__(self, spill_dir: str, num_shards: int, schema: pa.Schema, name: str, flush_rows: int = 16384):
        self.spill_dir = spill_dir
        self.num_shards = num_shards
        self.schema = schema
        self.name = name
        self.flush_rows = flush_rows
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_rows = 0
        self._writers: dict[int, tuple[pa.BufferOutputStream, ipc.RecordBatchStreamWriter]] = {}

    def add(self, table: pa.Table) -> None:
        """Buffers `table`'s rows by bucket (encoding them every `flush_rows` rows)."""
        for bucket, rows in split_by_bucket(table, self.num_shards, views=True):  # encoded as IPC: slices do
            self._pending.setdefault(bucket, []).append(rows)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        for bucket, parts in self._pending.items():
            rows = pa.concat_tables(parts)
            if bucket not in self._writers:
                stream = pa.BufferOutputStream()
                options = self.COMPRESSED if rows.num_rows >= self.COMPRESS_ROWS else self.PLAIN
                self._writers[bucket] = (stream, ipc.new_stream(stream, self.schema, options=options))
            self._writers[bucket][1].write_table(rows)
        self._pending = {}
        self._pending_rows = 0

    def close(self) -> dict[int, str]:
        """Writes the object; returns {bucket: part} in bucket order ({} for a unit without rows)."""
        self._flush()
        files = []  # (bucket, its IPC stream as an Arrow buffer: hashed and written without a copy)
        digest = hashlib.blake2b(digest_size=8)
        for bucket, (stream, writer) in sorted(self._writers.items()):
            writer.close()
            files.append((bucket, stream.getvalue()))
            digest.update(files[-1][1])
        self._writers = {}
        if not files:
            return {}
        url = spill_url(self.spill_dir, self.name, digest.hexdigest())
        parts, start = {}, 0
        with fsio.open_atomic(url) as handle:
            for bucket, data in files:
                handle.write(data)
                parts[bucket] = f"{url}#{start}-{start + data.size}"
                start += data.size
        return parts


def _part_text(url: str, start: int, end: int) -> str:
    """A part as load_parts reads it: "URL#START-END", or the URL alone for a whole object (start < 0)."""
    return url if start < 0 else f"{url}#{start}-{end}"


class UnitParts:
    """One unit's spill parts, compactly: its objects' URLs once and an int64 row per part (bucket, URL
    index, start, end; -1, -1 for a whole object, as an earlier version spilled a bucket).

    As text a part is "URL#START-END", about 100 bytes and a Python object, and a job has units x buckets of
    them (200,000 at 10M rows, about 3M at 100M). Here a part costs 32 bytes, and engines move one of these
    per unit, never one element per part (Beam's local driver at 10M rows: peak 648 -> 632 MB)."""

    __slots__ = ("urls", "rows")

    def __init__(self, urls: tuple[str, ...], rows: np.ndarray):
        self.urls = urls
        self.rows = rows

    @classmethod
    def of(cls, parts: dict[int, str]) -> UnitParts:
        """From {bucket: part} (SpillWriter.close, a completion marker)."""
        urls: dict[str, int] = {}
        rows = np.empty((len(parts), 4), np.int64)
        for i, (bucket, part) in enumerate(sorted(parts.items())):
            match = SPILL_PART.match(part)
            url = match["url"] if match else part
            start, end = (int(match["start"]), int(match["end"])) if match else (-1, -1)
            rows[i] = (bucket, urls.setdefault(url, len(urls)), start, end)
        return cls(tuple(urls), rows)

    def items(self) -> Iterator[tuple[int, str]]:
        """(bucket, part as text) in bucket order: what load_parts reads."""
        for bucket, url, start, end in self.rows.tolist():
            yield bucket, _part_text(self.urls[url], start, end)

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other) -> bool:
        return isinstance(other, UnitParts) and dict(self.items()) == dict(other.items())

    def __reduce__(self):
        return UnitParts, (self.urls, self.rows)


class PartIndex:
    """Every completed unit's spill parts laid out by bucket, for the steps that read a bucket (its fusion
    statistic, its fusion) to look up by bucket number: flat arrays of 32 bytes a part plus each object's URL
    once (6.4 MB for 10M rows at the default --rows-per-shard), built once per job (an argsort of the parts),
    instead of a list of part strings per bucket. A bucket's parts come out as text, in unit order."""

    def __init__(self, units: Iterable[UnitParts]):
        urls: list[str] = []
        blocks = []
        for parts in units:
            if len(parts):
                block = parts.rows.copy()
                block[:, 1] += len(urls)
                urls.extend(parts.urls)
                blocks.append(block)
        rows = np.concatenate(blocks) if blocks else np.empty((0, 4), np.int64)
        self.rows = rows[np.argsort(rows[:, 0], kind="stable")]
        self.urls = tuple(urls)
        self.buckets, starts = np.unique(self.rows[:, 0], return_index=True)
        self._bounds = dict(zip(self.buckets.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(rows)])))

    def parts(self, bucket: int) -> list[str]:
        """The bucket's parts as text ([] for a bucket no unit has rows of)."""
        start, stop = self._bounds.get(bucket, (0, 0))
        return [_part_text(self.urls[url], begin, end) for _, url, begin, end in self.rows[start:stop].tolist()]

    def items(self) -> Iterator[tuple[int, list[str]]]:
        """(bucket, its parts) for every bucket with rows, in bucket order; each list made when reached."""
        for bucket in self.buckets.tolist():
            yield bucket, self.parts(bucket)

    def __len__(self) -> int:
        return len(self.buckets)


def _read_whole(url: str, columns: list[str] | None) -> pa.Table:
    with fsspec.open(url, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def load_parts(parts: Iterable, columns: list[str] | None = None) -> pa.Table:
    """One table from spill parts or whole Parquet files (read in name order, so in unit order), or from
    Arrow tables (the runner's shuffle). A bucket's parts are fetched together (fsspec's cat_ranges: a
    ranged read each, concurrent on object stores). A part is an IPC stream, or a Parquet file where an
    earlier version spilled it (a resumed run reads those too); a whole file is a unit's error records, or
    a unit spilled by an earlier version still (an object per bucket).

    The table comes back as one chunk per column: a bucket reads a part per unit (1,000 parts of 50 rows
    at 10M rows), and Arrow's multi-key sort over a table of 1,000 chunks took 238 ms for 50k rows here
    against 5 ms over one (the duplicate check and the fusion sort), while combining costs 16 ms and a
    copy of the bucket's rows, held only while the parts are freed."""
    parts = list(parts)
    if not parts or not isinstance(parts[0], str):
        return pa.concat_tables([t.select(columns) if columns else t for t in parts]).combine_chunks()
    parts = sorted(parts)
    located = [(part, match) for part in parts if (match := SPILL_PART.match(part))]
    fetched: dict[str, bytes] = {}
    if located:
        fs, _ = fsspec.core.url_to_fs(located[0][1]["url"])  # one run's spill objects share a filesystem
        paths = [fs._strip_protocol(match["url"]) for _, match in located]  # url_to_fs: 10x the time
        chunks = fs.cat_ranges(paths, [int(match["start"]) for _, match in located],
                               [int(match["end"]) for _, match in located], on_error="raise")
        fetched = {part: chunk for (part, _), chunk in zip(located, chunks)}
    tables = [_read_part(fetched[part], columns) if part in fetched else _read_whole(part, columns)
              for part in parts]
    return pa.concat_tables(tables).combine_chunks()


def _read_part(data: bytes, columns: list[str] | None) -> pa.Table:
    if data[:4] == b"PAR1":  # spilled by an earlier version
        return pq.read_table(pa.BufferReader(data), columns=columns)
    table = ipc.open_stream(pa.BufferReader(data)).read_all()
    return table.select(columns) if columns else table


def bucket_partial(fusion, parts: Iterable, sink: MetricsSink, has_sample_index: bool, earlier=None):
    """The fusion's partial statistic of one bucket (HERO: sigma_u's sum and count), over the rows fusion
    will keep (later copies of a (prompt_id, sample_index) dropped); reads only the columns it needs.
    `earlier`: the statistic of the pass before (Fusion.rounds).

    With spill files this reads those columns of each bucket once more before fusion reads the whole
    bucket: the job statistic must be complete before any shard is fused, and holding buckets until then
    would make memory grow with the job.
    """
    columns = list(dict.fromkeys(list(fusion.partial_columns) + [PROMPT_ID, ORDER]
                                 + ([SAMPLE_INDEX] if has_sample_index else [])))
    with timed(sink, "sigma"):
        try:
            kept, _, _ = split_duplicates(load_parts(parts, columns))
            return fusion.partial(kept, earlier)
        finally:
            release_memory()
