"""Byte identity of written Parquet files, with a failure that says what differs.

A plain `assert files == expected` over file bytes prints a diff of the files' tails (the footer), which names
neither the file's column nor the row that differs. `assert_same_files` fails with the file, the shard
metadata keys, the columns and the first differing rows (values at full precision) instead."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.storage.fsio import METADATA_KEY

ROWS_SHOWN = 3  # the first differing rows of a column that the failure prints


def file_bytes(directory) -> dict[str, bytes]:
    """{file name: bytes} of every Parquet file directly in `directory`."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).glob("*.parquet"))}


def shard_bytes(output, part: str = "data") -> dict[str, bytes]:
    """{file name: bytes} of an output's `part` (data/, pairs/, errors/)."""
    return file_bytes(Path(output) / part)


def assert_same_files(actual: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """Fails unless both hold the same file names with the same bytes (and at least one file)."""
    if not expected:
        pytest.fail("the expected output holds no Parquet file", pytrace=False)
    if actual == expected:
        return
    problems = []
    if set(actual) != set(expected):
        problems.append(f"file names differ: only in actual {sorted(set(actual) - set(expected))}, "
                        f"only in expected {sorted(set(expected) - set(actual))}")
    for name in sorted(set(actual) & set(expected)):
        if actual[name] != expected[name]:
            problems.append(f"{name} ({len(actual[name])} bytes, expected {len(expected[name])}):\n"
                            + describe_difference(actual[name], expected[name]))
    pytest.fail("\n".join(problems), pytrace=False)


def describe_difference(actual: bytes, expected: bytes) -> str:
    """What differs between two Parquet files: schema, shard metadata keys, row counts, and per column the
    number of differing rows and the first ones (repr: floats at full precision)."""
    try:
        got, want = pq.read_table(io.BytesIO(actual)), pq.read_table(io.BytesIO(expected))
    except pa.ArrowException as exc:  # a truncated or foreign file: say so rather than fail here
        return f"  not both readable as Parquet: {exc}"
    lines = []
    if got.schema.remove_metadata() != want.schema.remove_metadata():
        lines.append(f"  schema: {got.schema.remove_metadata()} != {want.schema.remove_metadata()}")
    got_meta, want_meta = _shard_metadata(got.schema), _shard_metadata(want.schema)
    for key in sorted(set(got_meta) | set(want_meta)):
        if got_meta.get(key) != want_meta.get(key):
            lines.append(f"  metadata {key}: {got_meta.get(key)!r} != {want_meta.get(key)!r}")
    if got.num_rows != want.num_rows:
        lines.append(f"  rows: {got.num_rows} != {want.num_rows}")
    else:
        for column in [c for c in got.column_names if c in want.column_names]:
            left, right = got.column(column).to_pylist(), want.column(column).to_pylist()
            # repr: exact for floats, NaN equal to NaN (nested in lists and structs too), -0.0 unlike 0.0
            rows = [i for i, (a, b) in enumerate(zip(left, right)) if repr(a) != repr(b)]
            if rows:
                shown = ", ".join(f"row {i}: {left[i]!r} != {right[i]!r}" for i in rows[:ROWS_SHOWN])
                lines.append(f"  column {column}: {len(rows)} rows differ ({shown})")
    return "\n".join(lines) or "  same schema, metadata and values: the encoding differs"


def _shard_metadata(schema: pa.Schema) -> dict:
    return json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
