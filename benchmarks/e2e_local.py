#!/usr/bin/env python
"""End-to-end local benchmark: the whole pipeline vs plain single-process math-verify on the same rows.

    python benchmarks/e2e_local.py [--engine beam|dask] [--rows 100000] [--per-prompt 8] [--workers 1,2]
                                   [--baseline-rows 20000]

1. Generates N synthetic rollouts (8 per prompt; GSM8K "A: N", \\boxed{}, \\(..\\) and answer-free forms like
   ../shared/data) with a precomputed RM score column, written as 10,000-row Parquet files.
2. Runs `run_pipeline.py --engine E --rm-backend precomputed --verifier-workers W` on them in a child
   process, once per W in --workers, while sampling the resident memory of the child and all its
   descendants (verifier processes; Dask's scheduler and worker processes) every 0.1 s.
3. Runs the baseline in this process on the first --baseline-rows rows: for every row, math_verify.parse
   the reference (wrapped in $...$ so bare answers parse, as the pipeline does), parse the response, verify.
Prints one JSON line: engine, rows, runs (per W: wall_s, rows_per_s, stage_s = busy seconds per stage from
the engine's counters, peak_rss_mb), scaling (rows/s at the largest W / at the smallest),
baseline_rows_per_s, speedup (best pipeline rows/s / baseline rows/s), and the fraction of rows where
pipeline and baseline verdicts agree. The temporary directory is removed unless --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline.tools.demo import synthetic_rollouts  # noqa: E402


def write_inputs(directory: str, rows: int, per_prompt: int, rows_per_file: int = 10_000) -> None:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    written = 0
    index = 0
    while written < rows:
        count = min(rows_per_file, rows - written)
        # Seed per file keeps generation memory flat; prompt ids include the seed, so groups stay distinct.
        table = synthetic_rollouts(count, responses_per_prompt=per_prompt, seed=index)
        table = table.append_column("bench_rm_score", pa.array(rng.normal(0.0, 2.0, count)))
        pq.write_table(table, os.path.join(directory, f"rollouts-{index:05d}.parquet"), row_group_size=8192)
        written += count
        index += 1


def sample_peak_rss(process: psutil.Process, stop: threading.Event, result: dict) -> None:
    peak_tree = peak_driver = 0
    while not stop.is_set():
        try:
            driver = process.memory_info().rss
            tree = driver + sum(child.memory_info().rss for child in process.children(recursive=True))
        except psutil.Error:
            break
        peak_driver, peak_tree = max(peak_driver, driver), max(peak_tree, tree)
        stop.wait(0.1)
    result.update(peak_driver_rss_mb=round(peak_driver / 2**20, 1), peak_rss_mb=round(peak_tree / 2**20, 1))


def run_pipeline(input_dir: str, output_dir: str, engine: str, workers: int, extra: list[str]) -> tuple[float, dict, dict]:
    command = [sys.executable, os.path.join(REPO, "run_pipeline.py"), "--input", input_dir, "--output", output_dir,
               "--rm-backend", "precomputed", "--rm-score-column", "bench_rm_score", "--progress", "off",
               "--engine", engine, "--verifier-workers", str(workers), "--overwrite", *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_peak_rss, args=(psutil.Process(child.pid), stop, memory))
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"pipeline failed ({child.returncode}):\n{err[-4000:]}")
    with open(os.path.join(output_dir, "manifest.json")) as handle:
        manifest = json.load(handle)
    return wall, memory, manifest


def run_baseline(input_dir: str, limit: int | None) -> tuple[float, int, dict]:
    """Plain single-process math-verify; returns (rows/s, rows judged, {(prompt_id, sample_index): verdict})."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    table = pq.read_table(input_dir, columns=["prompt_id", "sample_index", "reference", "response"])
    if limit:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    verdicts = {}
    started = time.perf_counter()
    for row in rows:
        gold = parse(f"${row['reference']}$")
        predicted = parse(row["response"])
        verdicts[(row["prompt_id"], row["sample_index"])] = float(verify(gold, predicted))
    elapsed = time.perf_counter() - started
    return len(rows) / elapsed, len(rows), verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("beam", "dask"), default="beam")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="verifier processes per run, comma-separated (default 1,2)")
    parser.add_argument("--baseline-rows", type=int, default=20_000,
                        help="judge only the first N rows in the baseline (default 20000; 0 = all rows)")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary directory)")
    args, extra = parser.parse_known_args()  # anything else goes to run_pipeline.py (e.g. --batch-rows 4096)
    worker_counts = [int(w) for w in args.workers.split(",")]

    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-bench-")
    try:
        input_dir, output_dir = os.path.join(workdir, "input"), os.path.join(workdir, "output")
        write_inputs(input_dir, args.rows, args.per_prompt)
        runs = []
        for workers in worker_counts:
            wall, memory, manifest = run_pipeline(input_dir, output_dir, args.engine, workers, extra)
            counters = manifest["engine"]["counters"]
            runs.append({"verifier_workers": workers, "wall_s": round(wall, 2), "rows_per_s": round(args.rows / wall, 1),
                         "stage_s": {k[:-3]: round(v / 1000, 2) for k, v in counters.items() if k.endswith("_ms")},
                         **memory, "output_rows": manifest["output_rows"], "error_rows": manifest["error_rows"]})
        baseline_rate, baseline_rows, verdicts = run_baseline(input_dir, args.baseline_rows or None)
        labelled = pq.read_table(os.path.join(output_dir, "data"),
                                 columns=["prompt_id", "sample_index", "verifier_score"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    agree = sum(
        1 for pid, index, score in zip(*(labelled.column(c).to_pylist() for c in labelled.column_names))
        if (pid, index) in verdicts and (score or 0.0) == verdicts[(pid, index)]
    )
    best = max(r["rows_per_s"] for r in runs)
    print(json.dumps({
        "engine": args.engine,
        "pipeline_flags": extra,
        "rows": args.rows,
        "runs": runs,
        "scaling": round(runs[-1]["rows_per_s"] / runs[0]["rows_per_s"], 3),
        "baseline_rows": baseline_rows,
        "baseline_rows_per_s": round(baseline_rate, 1),
        "speedup": round(best / baseline_rate, 2),
        "verdict_agreement_with_baseline": round(agree / baseline_rows, 5),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
