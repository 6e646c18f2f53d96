"""Content-addressed reward-score cache under --cache-dir (a local path or an fsspec URL), for every engine.

Layout: CACHE_DIR/<namespace>/identity.json and scores-<digest>.parquet files (key: 16-byte binary,
rm_score: float32, rm_status: string). The namespace is a hash of everything a score depends on besides
the rollout: the RM's identity (hub commit or full-content hash of local weights), backend, dtype, max
length, truncation side and chat template; the key is a hash of the rollout itself (prompt messages and
response). So a changed weight file, template or setting starts a new namespace, and a nightly job whose
input grew scores only the rows it has not seen.

A worker reads its namespace once, on first use (about 1 s per million cached rows, 21 bytes each in
memory), and writes one file per scored batch (its name is the hash of its keys: rewriting it is
harmless). Rows scored with status ok or truncated are cached; errors are retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import fsio
from schemas.rollouts import SCORED_STATUSES

log = logging.getLogger(__name__)

KEY_BYTES = 16
CACHED_STATUSES = SCORED_STATUSES
_SCHEMA = pa.schema([("key", pa.binary(KEY_BYTES)), ("rm_score", pa.float32()), ("rm_status", pa.string())])


def _canonical_prompt(prompt) -> str:
    """The prompt as the RM renders it: a string, or its messages' roles and contents in order."""
    if isinstance(prompt, str):
        return json.dumps(prompt, ensure_ascii=False)
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def rollout_keys(prompts: list, responses: list) -> np.ndarray:
    """16-byte BLAKE2b keys of (prompt, response), as a numpy 'S16' array (about 1M rows/s)."""
    keys = np.empty(len(prompts), dtype=f"S{KEY_BYTES}")
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        digest = hashlib.blake2b(digest_size=KEY_BYTES)
        digest.update(_canonical_prompt(prompt).encode())
        digest.update(b"\0")
        digest.update(response.encode())
        keys[i] = digest.digest()
    return keys


def namespace_of(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ScoreCache:
    """Lookups and stores for one namespace; thread-safe; loads lazily."""

    def __init__(self, root: str, identity: dict):
        self.identity = identity
        self.directory = fsio.join(root, namespace_of(identity))
        self._lock = threading.Lock()
        self._keys: np.ndarray | None = None
        self._scores = np.empty(0, np.float32)
        self._statuses = np.empty(0, dtype=object)

    def _load(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.directory)
        fs.makedirs(path, exist_ok=True)
        marker = fsio.join(self.directory, "identity.json")
        if not fs.exists(f"{path}/identity.json"):
            with fsio.open_atomic(marker, "w") as handle:
                json.dump(self.identity, handle, indent=2, sort_keys=True, default=str)
        files = sorted(fs.glob(f"{path}/scores-*.parquet"))
        tables = []
        for name in files:
            with fs.open(name, "rb") as handle:
                tables.append(pq.read_table(handle, schema=_SCHEMA))
        table = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
        keys = np.array(table.column("key").to_pylist(), dtype=f"S{KEY_BYTES}") if table.num_rows else \
            np.empty(0, dtype=f"S{KEY_BYTES}")
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._scores = table.column("rm_score").to_numpy(zero_copy_only=False)[order]
        self._statuses = np.array(table.column("rm_status").to_pylist(), dtype=object)[order]
        log.info("score cache %s: %d cached rows in %d files", self.directory, len(keys), len(files))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hit mask, scores, statuses) for `keys`; scores NaN and statuses None where missed."""
        with self._lock:
            if self._keys is None:
                self._load()
        scores = np.full(len(keys), np.nan)
        statuses = np.full(len(keys), None, dtype=object)
        if len(self._keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), bool), scores, statuses
        positions = np.searchsorted(self._keys, keys)
        inside = positions < len(self._keys)
        hit = np.zeros(len(keys), bool)
        hit[inside] = self._keys[positions[inside]] == keys[inside]
        scores[hit] = self._scores[positions[hit]]
        statuses[hit] = self._statuses[positions[hit]]
        return hit, scores, statuses

    def store(self, keys: np.ndarray, scores: np.ndarray, statuses: list[str]) -> int:
        """Writes the rows whose status is cacheable; returns how many."""
        keep = [i for i, status in enumerate(statuses) if status in CACHED_STATUSES and np.isfinite(scores[i])]
        if not keep:
            return 0
        chosen = keys[keep]
        table = pa.table({"key": pa.array([bytes(k).ljust(KEY_BYTES, b"\0") for k in chosen], pa.binary(KEY_BYTES)),
                          "rm_score": pa.array(np.asarray(scores)[keep].astype(np.float32), pa.float32()),
                          "rm_status": pa.array([statuses[i] for i in keep], pa.string())}, schema=_SCHEMA)
        name = hashlib.sha256(b"".join(bytes(k).ljust(KEY_BYTES, b"\0") for k in chosen)).hexdigest()[:24]
        fsio.write_parquet_atomic(table, fsio.join(self.directory, f"scores-{name}.parquet"))
        return len(keep)
