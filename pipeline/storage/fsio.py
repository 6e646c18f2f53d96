"""Parquet input discovery and atomic output writes over fsspec (local paths or any fsspec URL)."""

from __future__ import annotations

import glob as globlib
import hashlib
import io as pyio
import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"herolabel"


class InputError(ValueError):
    """The --input location cannot be read (raised before any data moves)."""


@dataclass(frozen=True)
class InputFile:
    """One input Parquet file: its URL, position in the job, schema, and where each row group starts."""

    index: int
    url: str
    schema: pa.Schema
    num_rows: int
    row_group_starts: tuple[int, ...]
    row_group_rows: tuple[int, ...]
    footer_sha256: str = ""  # of the Parquet footer (schema, row groups, column statistics, offsets)
    # With a layout that explodes rows while reading: per row group, its sub-units as (raw rows before it, raw
    # rows, rows once exploded); row_group_rows and row_group_starts then count exploded rows.
    row_group_parts: tuple[tuple[tuple[int, int, int], ...], ...] | None = None


def _has_magic(path: str) -> bool:
    return globlib.has_magic(path)


def as_url(fs, path: str, like: str) -> str:
    """`path` as found by `fs`, written the way the user wrote `like`: with its protocol only if it had one."""
    return fs.unstrip_protocol(path) if "://" in like else path


def list_input_files(spec: str) -> list[str]:
    """Expands a file, a directory (recursively, *.parquet) or a glob into a sorted list of file URLs."""
    try:
        fs, path = fsspec.core.url_to_fs(spec)
        if _has_magic(path):
            paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
        elif fs.isdir(path):
            paths = sorted(p for p in fs.find(path) if p.endswith(".parquet") and "/." not in p[len(path):])
        elif fs.isfile(path):
            paths = [path]
        else:
            raise InputError(f"--input {spec!r}: no such file or directory")
    except (OSError, ImportError) as exc:  # wrong credentials (PermissionError), no filesystem for the protocol
        raise InputError(f"--input {spec!r} cannot be listed: {getattr(exc, 'strerror', None) or exc}") from exc
    if not paths:
        raise InputError(f"--input {spec!r}: no Parquet files found")
    return [as_url(fs, p, spec) for p in paths]


def inspect_inputs(spec: str) -> list[InputFile]:
    """Reads the footer of every input file (schema, row counts; no data)."""
    files = []
    for index, url in enumerate(list_input_files(spec)):
        try:
            with fsspec.open(url, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
                footer = _footer_digest(handle)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"--input: {url} is not a readable Parquet file: {exc}") from exc
        rows = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        starts, total = [], 0
        for count in rows:
            starts.append(total)
            total += count
        files.append(InputFile(index, url, schema, metadata.num_rows, tuple(starts), rows, footer))
    return files


def _footer_digest(handle) -> str:
    """sha256 of a Parquet file's footer: changes when the data is rewritten (offsets, sizes and column
    statistics move), read with one small seek instead of the whole file."""
    handle.seek(-8, 2)
    length = int.from_bytes(handle.read(4), "little")
    handle.seek(-8 - length, 2)
    return hashlib.sha256(handle.read(length)).hexdigest()


def iter_row_group(url: str, row_group: int, batch_rows: int, skip: int = 0, limit: int | None = None):
    """Yields (offset within the row group, pa.Table) batches of at most `batch_rows` rows, for the rows
    [skip, skip + limit) of the row group. Rows before `skip` are decoded and dropped (Parquet reads a row
    group's pages in order), so a slice far into a huge row group costs a decode of what precedes it."""
    offset = 0
    end = None if limit is None else skip + limit
    with fsspec.open(url, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, row_groups=[row_group]):
            start, stop = offset, offset + batch.num_rows
            offset = stop
            if stop <= skip:
                continue
            if end is not None and start >= end:
                return
            low, high = max(start, skip), stop if end is None else min(stop, end)
            yield low, pa.Table.from_batches([batch.slice(low - start, high - low)])


# Object stores whose single-object upload is already atomic (a reader sees the old object or the whole
# new one); a "rename" there is a copy plus a delete, paid for nothing.
ATOMIC_UPLOAD_PROTOCOLS = {"gs", "gcs", "s3", "s3a", "abfs", "abfss", "az"}


def renames_for_atomicity(fs) -> bool:
    """True on local and POSIX-like filesystems (write a temporary, rename); False on object stores."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return not set(protocols) & ATOMIC_UPLOAD_PROTOCOLS


@contextmanager
def open_atomic(url: str, mode: str = "wb"):
    """A handle whose content appears at `url` only once complete, and not at all if the block raises:
    through a dot-prefixed temporary and a rename on local and POSIX-like filesystems; on object stores
    the content is built in memory and uploaded in one call (their single uploads are atomic, and a
    streaming upload would be completed by close() even on an error)."""
    fs, path = fsspec.core.url_to_fs(url)
    parent, name = path.rsplit("/", 1)
    if not renames_for_atomicity(fs):
        # No makedirs: object stores have no directories, and s3fs's would create a missing bucket.
        buffer = pyio.BytesIO() if "b" in mode else pyio.StringIO()
        yield buffer
        data = buffer.getvalue()
        fs.pipe_file(path, data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    fs.makedirs(parent, exist_ok=True)
    temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(temporary, mode) as handle:
            yield handle
    except BaseException:
        if fs.exists(temporary):
            fs.rm(temporary)
        raise
    fs.mv(temporary, path)


def write_parquet_atomic(table: pa.Table, url: str, metadata: dict | None = None) -> str:
    """Writes `table` to `url` so that a reader never sees a half-written file (see open_atomic); a
    crashed writer leaves at most a dot-prefixed temporary."""
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    with open_atomic(url) as handle:
        pq.write_table(table, handle, compression="zstd")
    return url


def read_file_metadata(url: str) -> dict:
    """The herolabel metadata stored in a written shard."""
    with fsspec.open(url, "rb") as handle:
        raw = pq.ParquetFile(handle).schema_arrow.metadata or {}
    return json.loads(raw.get(METADATA_KEY, b"{}"))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
