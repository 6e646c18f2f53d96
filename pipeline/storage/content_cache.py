"""A content-keyed cache under --cache-dir that scales: entries filed by where their rows come from, so a
unit of work reads a few objects, never the whole cache. The score and verdict caches are two of its
namespaces (pipeline/storage/score_cache.py, verdict_cache.py).

Layout of one namespace, CACHE_DIR/<namespace>/ (the namespace: a hash of everything a value depends on
besides the row: model, settings, verifier source and versions):

    identity.json                what the namespace hash was made of
    segments/<locality>/*.parquet   entries (key: 16-byte content hash, then the value columns), sorted by key
    aliases/<alias>              the locality an input location last held

Keys are content only (never file names or row positions). The locality is only where entries are filed:
a hash of the unit's input file *content* (its footer digest), row group and part, so yesterday's rows,
arriving in the same files, are found by reading that locality's segments (one object after compaction),
whatever the file is called now or where it sorts. A file edited in place has a new footer: its alias (a
hash of URL, row group and part) names the locality the location held before, whose entries still serve the
rows that did not change and are filed again under the new locality. A unit whose rows are in no locality
it can name (an input re-cut into other files) is computed again: a miss, never a wrong value.

Costs: a lookup reads its locality once per worker (then held: LOCALITIES_HELD localities, a unit's entries
each, at most 65,536 rows, about 40-100 bytes per entry); a batch with misses writes one segment. Objects
read per 1M lookups: about 1M / 65,536 x (1 list + 1 read) after compaction. `compact` merges each
locality's segments into one (herolabel cache compact DIR; automatically at the end of a run for localities
past AUTO_COMPACT_FILES files): it writes the merged segment before deleting what it merged, and a reader
that finds a listed segment gone lists again, so compaction is safe while another run reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import fsio

log = logging.getLogger(__name__)

KEY_BYTES = 16
KEY_FIELD = pa.field("key", pa.binary(KEY_BYTES))
# Where read_unit files a unit's location in every batch's schema metadata (stripped before spilling).
LOCALITY_METADATA = b"herolabel.locality"
UNFILED = "unfiled"  # the locality of batches that carry none (a stage used on its own)
LOCALITIES_HELD = 4
AUTO_COMPACT_FILES = 8
_LIST_RETRIES = 5


@dataclass(frozen=True)
class Locality:
    """Where a unit's entries are filed (`name`: its input's content, row group and part) and the alias of
    its input location (URL, row group and part), which names the locality that location held before."""

    name: str
    alias: str | None = None


def unit_locality(footer_sha256: str, url: str, row_group: int, part: int | None) -> Locality:
    def digest(*parts) -> str:
        return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=12).hexdigest()

    return Locality(digest("content", footer_sha256, row_group, part), digest("location", url, row_group, part))


def with_locality(table: pa.Table, locality: Locality) -> pa.Table:
    return table.replace_schema_metadata({LOCALITY_METADATA: json.dumps([locality.name, locality.alias])})


def locality_of(table: pa.Table) -> Locality:
    """The locality read_unit filed in `table`'s metadata, or UNFILED."""
    raw = (table.schema.metadata or {}).get(LOCALITY_METADATA)
    if raw is None:
        return Locality(UNFILED)
    name, alias = json.loads(raw)
    return Locality(name, alias)


def namespace_of(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def content_keys(*columns: list) -> np.ndarray:
    """16-byte BLAKE2b keys of aligned text columns (None kept apart from ""), as numpy 'S16' (~1M rows/s)."""
    keys = np.empty(len(columns[0]) if columns else 0, dtype=f"S{KEY_BYTES}")
    for i, values in enumerate(zip(*columns)):
        digest = hashlib.blake2b(digest_size=KEY_BYTES)
        for value in values:
            digest.update(b"\1" if value is None else b"\2" + value.encode())
            digest.update(b"\0")
        keys[i] = digest.digest()
    return keys


def _key_array(keys: np.ndarray) -> pa.Array:
    return pa.array([bytes(k).ljust(KEY_BYTES, b"\0") for k in keys], pa.binary(KEY_BYTES))


def _sorted_entries(table: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """(keys as sorted 'S16', the entries in that order), one entry per key (the last written wins)."""
    keys = np.array(table.column("key").to_pylist(), dtype=f"S{KEY_BYTES}") if table.num_rows else \
        np.empty(0, dtype=f"S{KEY_BYTES}")
    # Last occurrence of each key: stable sort of the reversed order keeps the latest first.
    reverse = np.arange(len(keys))[::-1]
    order = reverse[np.argsort(keys[::-1], kind="stable")]
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    order = order[first]
    return keys[first], table.take(pa.array(order, pa.int64()))


class ContentCache:
    """Lookups and stores of one namespace (`identity`) with value columns `schema`; thread-safe."""

    def __init__(self, root: str, identity: dict, schema: pa.Schema):
        self.identity = identity
        self.schema = pa.schema([KEY_FIELD, *schema])
        self.directory = fsio.join(root, namespace_of(identity))
        self._lock = threading.Lock()
        self._ready = False
        self._held: OrderedDict[str, tuple[np.ndarray, pa.Table, bool]] = OrderedDict()
        self._aliases_written: set[tuple[str | None, str]] = set()
        self.objects_read = 0

    def _prepare(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.directory)
        fs.makedirs(path, exist_ok=True)
        if not fs.exists(f"{path}/identity.json"):
            with fsio.open_atomic(fsio.join(self.directory, "identity.json"), "w") as handle:
                json.dump(self.identity, handle, indent=2, sort_keys=True, default=str)
        self._ready = True

    def _read_locality(self, name: str) -> pa.Table:
        fs, path = fsspec.core.url_to_fs(fsio.join(self.directory, "segments", name))
        for attempt in range(_LIST_RETRIES):
            try:
                files = sorted(fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []
                self.objects_read += 1
                tables = []
                for file in files:
                    with fs.open(file, "rb") as handle:
                        tables.append(pq.read_table(handle, schema=self.schema))
                    self.objects_read += 1
                return pa.concat_tables(tables) if tables else self.schema.empty_table()
            except FileNotFoundError:  # compaction replaced a listed segment: the merged one is there now
                if attempt == _LIST_RETRIES - 1:
                    raise
                fs.invalidate_cache()
        raise AssertionError("unreachable")

    def _alias_target(self, alias: str | None) -> str | None:
        if alias is None:
            return None
        url = fsio.join(self.directory, "aliases", alias)
        fs, path = fsspec.core.url_to_fs(url)
        try:
            with fs.open(path, "r") as handle:
                self.objects_read += 1
                return handle.read().strip() or None
        except FileNotFoundError:
            return None

    def _entries(self, locality: Locality) -> tuple[np.ndarray, pa.Table, bool]:
        """(sorted keys, entries, whether they are filed under the locality itself), held after the first
        read; a locality with no segments starts from the one its alias names (the location's last content)."""
        if locality.name in self._held:
            self._held.move_to_end(locality.name)
            return self._held[locality.name]
        table, own = self._read_locality(locality.name), True
        previous = self._alias_target(locality.alias)
        if table.num_rows == 0 and previous is not None and previous != locality.name:
            table, own = self._read_locality(previous), False
        elif table.num_rows and locality.alias is not None and previous != locality.name:
            self._point_alias(locality)  # the location holds this content now (a copy, or a file put back)
        self._held[locality.name] = (*_sorted_entries(table), own)
        while len(self._held) > LOCALITIES_HELD:
            self._held.popitem(last=False)
        return self._held[locality.name]

    def lookup(self, keys: np.ndarray, locality: Locality = Locality(UNFILED)) -> tuple[np.ndarray, pa.Table]:
        """(hit mask, the value columns of the hits in row order) for `keys`. Hits found through the
        locality's alias are filed again under the locality itself, so the next run finds them there."""
        with self._lock:
            if not self._ready:
                self._prepare()
            cached_keys, entries, own = self._entries(locality)
        hit = np.zeros(len(keys), bool)
        if len(cached_keys) and len(keys):
            positions = np.searchsorted(cached_keys, keys)
            inside = positions < len(cached_keys)
            hit[inside] = cached_keys[positions[inside]] == keys[inside]
            found = entries.take(pa.array(positions[hit], pa.int64()))
        else:
            found = self.schema.empty_table()
        if not own and found.num_rows:
            self._write(found, locality)
        return hit, found.drop_columns(["key"])

    def store(self, keys: np.ndarray, values: pa.Table, locality: Locality = Locality(UNFILED)) -> int:
        """Files `values` (the value columns, one row per key) under `locality`; returns how many rows."""
        if len(keys) == 0:
            return 0
        table = pa.table([_key_array(keys), *values.select(self.schema.names[1:]).columns], schema=self.schema)
        self._write(table, locality)
        return table.num_rows

    def _write(self, table: pa.Table, locality: Locality) -> None:
        """One segment (named after its keys: a retried batch rewrites the same object), then the alias."""
        with self._lock:
            if not self._ready:
                self._prepare()
        _, table = _sorted_entries(table)
        name = hashlib.sha256(b"".join(table.column("key").to_pylist())).hexdigest()[:24]
        fsio.write_parquet_atomic(table, fsio.join(self.directory, "segments", locality.name, f"{name}.parquet"))
        with self._lock:
            if locality.name in self._held:  # the unit's later batches see them too
                _, held, own = self._held[locality.name]
                self._held[locality.name] = (*_sorted_entries(pa.concat_tables([held, table])), own)
            alias_known = (locality.alias, locality.name) in self._aliases_written
        if locality.alias is not None and not alias_known and self._alias_target(locality.alias) != locality.name:
            self._point_alias(locality)

    def _point_alias(self, locality: Locality) -> None:
        with fsio.open_atomic(fsio.join(self.directory, "aliases", locality.alias), "w") as handle:
            handle.write(locality.name)
        self._aliases_written.add((locality.alias, locality.name))


RETIRE_AFTER_S = 60.0  # how long a merged-away segment stays readable: far longer than a reader's listing


def compact(root: str, min_files: int = 2, retire_after_s: float = RETIRE_AFTER_S) -> dict:
    """Merges, in every namespace under `root`, each locality's segments into one when it has at least
    `min_files`. Returns {"namespaces", "localities", "files_before", "files_after", "retired", "deleted"}
    (files counted are live segments; retired ones are not).

    Safe while other runs read. A directory listing is not a snapshot: an entry added or removed while a
    reader lists may or may not appear, so deleting the merged-away segments right after writing the merged
    one could show a reader neither. So they are only retired: written down in `_retired-<merged>.json` and
    deleted by a later compaction once retired for `retire_after_s` (readers list in milliseconds and read
    both meanwhile: the same entries twice, which lookups tolerate). A reader that finds a listed segment
    gone lists again (ContentCache._read_locality). `retire_after_s` 0 deletes at once (no concurrent reader).
    Timestamps are the compacting machine's clock."""
    fs, path = fsspec.core.url_to_fs(root)
    counts = {"namespaces": 0, "localities": 0, "files_before": 0, "files_after": 0, "retired": 0, "deleted": 0}
    if not fs.exists(path):
        return counts
    for marker in sorted(fs.glob(f"{path}/*/identity.json")):
        namespace = marker.rsplit("/", 1)[0]
        counts["namespaces"] += 1
        for segment_dir in sorted(fs.glob(f"{namespace}/segments/*")):
            retired = _delete_retired(fs, segment_dir, retire_after_s, counts)
            files = [f for f in sorted(fs.glob(f"{segment_dir}/*.parquet")) if f.rsplit("/", 1)[-1] not in retired]
            counts["localities"] += 1
            counts["files_before"] += len(files)
            if len(files) < max(2, min_files):
                counts["files_after"] += len(files)
                continue
            tables = []
            for file in files:
                with fs.open(file, "rb") as handle:
                    tables.append(pq.read_table(handle))
            _, merged = _sorted_entries(pa.concat_tables(tables))
            name = hashlib.sha256(b"".join(merged.column("key").to_pylist())).hexdigest()[:24]
            fsio.write_parquet_atomic(merged, fsio.as_url(fs, f"{segment_dir}/{name}.parquet", root))
            gone = [f.rsplit("/", 1)[-1] for f in files if f.rsplit("/", 1)[-1] != f"{name}.parquet"]
            with fsio.open_atomic(fsio.as_url(fs, f"{segment_dir}/_retired-{name}.json", root), "w") as handle:
                json.dump({"retired_at": time.time(), "files": gone}, handle)
            counts["files_after"] += 1
            counts["retired"] += len(gone)
            if retire_after_s <= 0:
                _delete_retired(fs, segment_dir, 0, counts)
    return counts


def _delete_retired(fs, segment_dir: str, retire_after_s: float, counts: dict) -> set[str]:
    """Deletes the segments retired at least `retire_after_s` ago (and their notes); returns the names of
    those still waiting."""
    waiting: set[str] = set()
    for note in sorted(fs.glob(f"{segment_dir}/_retired-*.json")):
        with fs.open(note, "r") as handle:
            record = json.load(handle)
        if time.time() - record["retired_at"] < retire_after_s:
            waiting.update(record["files"])
            continue
        for name in record["files"]:
            if fs.exists(f"{segment_dir}/{name}"):
                fs.rm(f"{segment_dir}/{name}")
                counts["deleted"] += 1
        fs.rm(note)
    return waiting


def file_counts(root: str) -> dict:
    """Segments and aliases per namespace under `root` (what a user checks to see the cache stays bounded)."""
    fs, path = fsspec.core.url_to_fs(root)
    counts = {}
    for marker in sorted(fs.glob(f"{path}/*/identity.json")) if fs.exists(path) else []:
        namespace = marker.rsplit("/", 1)[0]
        counts[namespace.rsplit("/", 1)[-1]] = {"segments": len(fs.glob(f"{namespace}/segments/*/*.parquet")),
                                                "aliases": len(fs.glob(f"{namespace}/aliases/*"))}
    return counts
