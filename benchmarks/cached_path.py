#!/usr/bin/env python
"""The cached path alone at scale: every row a verdict-cache hit, so a run is cache lookups + fusion + write.

    python benchmarks/cached_path.py [--rows 10000000] [--engine beam] [--workers 2] [--workdir DIR]

1. Generates N synthetic rollouts with a precomputed RM score column (benchmarks/e2e_local.py's generator).
2. Fills the verdict cache synthetically: for every input row group, the verdict keys of its rows filed under
   that row group's locality, exactly as a run files them (a made-up verdict per row: the values do not change
   the cost, and no row is verified).
3. Runs the pipeline on the N rows with --cache-dir in a child process, its peak PSS sampled.
Prints one JSON line: the fill's wall seconds, the run's wall seconds, microseconds per row, peak PSS, the rows
verified (0) and served by the cache, cache objects read, and the cache's segment and alias counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e_local import write_inputs  # noqa: E402
from incremental import run  # noqa: E402


def fill_verdict_cache(input_dir: str, cache: str, workers: int) -> int:
    """Files a made-up verdict for every row under its row group's locality; returns the rows filed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.storage import fsio
    from pipeline.storage.content_cache import unit_locality
    from pipeline.storage.verdict_cache import VERDICT_VALUES, verdict_cache, verdict_keys
    from transforms.verify import VerifierConfig

    config = VerifierConfig(num_workers=workers)  # as build_config makes it: cache_dir is no part of the key
    cache_of = verdict_cache(cache, config)
    filed = 0
    for file in fsio.inspect_inputs(input_dir):
        parquet = pq.ParquetFile(file.url)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["prompt", "response", "reference", "data_source"])
            n = table.num_rows
            values = pa.table({"verifier_score": pa.array(np.arange(n) % 2, pa.float32()),
                               "verifier_status": pa.array(["ok"] * n), "extracted_answer": pa.array(["42"] * n),
                               "verifier_rule": pa.array(["math_verify"] * n)}, schema=VERDICT_VALUES)
            filed += cache_of.store(verdict_keys(table, config), values,
                                    unit_locality(file.footer_sha256, file.url, group, None))
    return filed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--engine", default="beam")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    from pipeline.storage.content_cache import file_counts

    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-cached-path-")
    inputs, cache = os.path.join(workdir, "rollouts"), os.path.join(workdir, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    if not os.path.isdir(inputs):
        write_inputs(inputs, args.rows, per_prompt=8)
    started = time.perf_counter()
    filed = fill_verdict_cache(inputs, cache, args.workers)
    fill_s = time.perf_counter() - started
    rm_flags = ["--rm-backend", "precomputed", "--rm-score-column", "bench_rm_score"]
    result = run(inputs, os.path.join(workdir, "out"), args, rm_flags, cache)
    print(json.dumps({
        "benchmark": "cached_path", "engine": args.engine, "workers": args.workers, "rows": args.rows,
        "filled_rows": filed, "fill_s": round(fill_s, 1), "run": result,
        "us_per_row": round(result["wall_s"] / args.rows * 1e6, 2), "cache_files": file_counts(cache),
    }))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
