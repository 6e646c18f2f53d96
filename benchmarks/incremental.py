#!/usr/bin/env python
"""The nightly relabel: a full run with --cache-dir, then the same rows plus 1 % new ones with the same cache,
against a full run of the grown input without a cache, all in one invocation.

    python benchmarks/incremental.py [--rows 1000000] [--new-fraction 0.01] [--engine beam] [--workers 2]
                                     [--rm precomputed|tiny] [--workdir DIR]

1. Generates N synthetic rollouts (benchmarks/e2e_local.py's generator: 8 per prompt, 10,000-row files) with a
   precomputed RM score column; with --rm tiny the tiny transformers RM scores them instead (about 8k tokens/s
   on a 2-core machine: keep N near 50k).
2. full: the N rows with --cache-dir (fills the verdict cache, and with --rm tiny the score cache).
3. rerun: the same N rows again with the cache: nothing is verified (or scored).
4. incremental: the N rows plus N x new-fraction new rows (new prompts, one more file) with the same cache.
5. reference: the grown input, full, without a cache.
Each run is a child process with its peak PSS sampled (child and descendants, every 0.2 s). Prints one JSON
line: wall seconds and peak PSS of each, incremental / full wall and memory ratios, whether incremental's
data/ equals the reference's byte for byte, the rows verified / scored / served from the caches, the cache
objects read per 1M lookups, and the cache's files per 1M rows after the run's compaction.
Targets (precomputed, N = 1M): incremental <= 5 % of full's wall, memory <= 1.15 x full's, byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e_local import REPO, run_sampled, worker_flags, write_inputs  # noqa: E402

sys.path.insert(0, REPO)


def data_digest(output: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(output, "data").glob("*.parquet")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def write_new_rows(directory: str, rows: int) -> None:
    """`rows` new rollouts (prompt ids no earlier file has) in one more file, sorting first."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.tools.demo import synthetic_rollouts

    table = synthetic_rollouts(rows, seed=10_000)
    ids = [f"night2-{p}" for p in table.column("prompt_id").to_pylist()]
    table = table.set_column(table.schema.get_field_index("prompt_id"), "prompt_id", pa.array(ids))
    table = table.append_column("bench_rm_score", pa.array(np.random.default_rng(1).normal(0.0, 2.0, rows)))
    pq.write_table(table, os.path.join(directory, "new-00000.parquet"), row_group_size=8192)


def run(input_dir: str, output_dir: str, args, rm_flags: list[str], cache: str | None) -> dict:
    command = [sys.executable, os.path.join(REPO, "run_pipeline.py"), "--input", input_dir, "--output", output_dir,
               *rm_flags, "--progress", "off", "--engine", args.engine, *worker_flags(args.engine, args.workers),
               "--overwrite", *(["--cache-dir", cache] if cache else [])]
    wall, memory = run_sampled(command, f"pipeline run {output_dir}")
    with open(os.path.join(output_dir, "manifest.json")) as handle:
        manifest = json.load(handle)
    counters = manifest["engine"]["counters"]
    return {"wall_s": round(wall, 2), "peak_pss_mb": memory["peak_pss_mb"],
            "peak_pss_by_process_mb": memory["peak_pss_by_process_mb"],
            "pss_at_peak_by_process_mb": memory["pss_at_peak_by_process_mb"], "rows": manifest["input_rows"],
            "verifier_rows": manifest["verifier_rows"], "rm_rows": manifest["rm_rows"],
            "cache_objects_read": int(counters.get("cache_objects_read", 0)),
            "cache_compaction": manifest["engine"].get("cache_compaction"), "data_sha256": data_digest(output_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--engine", default="beam")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rm", choices=["precomputed", "tiny"], default="precomputed")
    parser.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temporary dir)")
    args = parser.parse_args()
    from pipeline.storage.content_cache import file_counts

    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-incremental-")
    base, grown, cache = (os.path.join(workdir, name) for name in ("night1", "night2", "cache"))
    for path in (base, grown, cache):
        shutil.rmtree(path, ignore_errors=True)
    write_inputs(base, args.rows, per_prompt=8)
    shutil.copytree(base, grown)  # yesterday's files, under another directory (their content is what counts)
    new_rows = max(1, round(args.rows * args.new_fraction))
    write_new_rows(grown, new_rows)
    if args.rm == "tiny":
        from pipeline.tools.demo import build_tiny_reward_model

        rm_flags = ["--rm-model", build_tiny_reward_model(os.path.join(workdir, "tiny_rm"), seed=0)]
    else:
        rm_flags = ["--rm-backend", "precomputed", "--rm-score-column", "bench_rm_score"]

    full = run(base, os.path.join(workdir, "out-full"), args, rm_flags, cache)
    rerun = run(base, os.path.join(workdir, "out-rerun"), args, rm_flags, cache)
    incremental = run(grown, os.path.join(workdir, "out-incremental"), args, rm_flags, cache)
    reference = run(grown, os.path.join(workdir, "out-reference"), args, rm_flags, None)
    counts = file_counts(cache)
    lookups = incremental["rows"] * (2 if args.rm == "tiny" else 1)  # a verdict and a score lookup per row
    result = {
        "benchmark": "incremental", "engine": args.engine, "workers": args.workers, "rm": args.rm,
        "rows": args.rows, "new_rows": new_rows,
        "full": full, "rerun": rerun, "incremental": incremental, "reference": reference,
        "incremental_over_full_wall": round(incremental["wall_s"] / full["wall_s"], 4),
        "incremental_over_full_peak_pss": round(incremental["peak_pss_mb"] / full["peak_pss_mb"], 3),
        "incremental_data_equals_reference": incremental["data_sha256"] == reference["data_sha256"],
        "rerun_data_equals_full": rerun["data_sha256"] == full["data_sha256"],
        "cache_objects_read_per_1m_lookups": round(incremental["cache_objects_read"] / lookups * 1e6, 1),
        "cache_files": counts,
        "cache_files_per_1m_rows": {ns: {k: round(v / (incremental["rows"] / 1e6), 1) for k, v in c.items()}
                                    for ns, c in counts.items()},
    }
    print(json.dumps(result))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
