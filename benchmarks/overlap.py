#!/usr/bin/env python
"""Does the reward model wait for the verifier? Wall time and the scorer's waiting share, overlap on and off.

    python benchmarks/overlap.py [--rows 8000] [--batch-rows 500] [--engines beam,dask]

Generates the demo's synthetic rollouts (row groups of 2 x --batch-rows rows, so there are many batches
and Dask units to overlap) and its tiny random reward model (offline), then labels them with 1 torch
thread (OMP_NUM_THREADS=1) and 1 verifier process, so verification and scoring each have one core of
their own when they overlap:
- beam, --verify-ahead 2 (overlap on: batch k+1.. verified while batch k is scored) and --verify-ahead 0
  (off: verify, then score, in turn). waited_fraction = score_wait / (score_wait + score), from the
  engine's counters: the share of the scoring loop spent waiting for a verified batch.
- dask (separate verify and score tasks overlap by themselves): scorer_idle_fraction = 1 - score busy
  time / engine wall time (an upper bound: it also counts start-up and the final fuse).
Prints one JSON line per run, then a summary line with the on/off wall-time ratio. The temporary
directory is removed unless --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline.tools.demo import build_tiny_reward_model, write_synthetic_rollouts  # noqa: E402


def label(input_path: str, model: str, output: str, engine: str, verify_ahead: int, batch_rows: int) -> dict:
    command = [sys.executable, os.path.join(REPO, "run_pipeline.py"), "--input", input_path, "--output", output,
               "--rm-model", model, "--verifier-workers", "1", "--engine", engine, "--verify-ahead", str(verify_ahead),
               "--batch-rows", str(batch_rows), "--progress", "off", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{finished.stderr[-4000:]}")
    with open(os.path.join(output, "manifest.json")) as handle:
        manifest = json.load(handle)
    counters = manifest["engine"]["counters"]
    score_s, wait_s = counters.get("score_ms", 0) / 1000, counters.get("score_wait_ms", 0) / 1000
    result = {"engine": engine, "verify_ahead": verify_ahead, "rows": manifest["input_rows"], "wall_s": round(wall, 2),
              "engine_wall_s": manifest["engine"]["wall_s"], "score_s": round(score_s, 2),
              "verify_s": round(counters.get("verify_ms", 0) / 1000, 2)}
    if engine == "beam":
        result.update(score_wait_s=round(wait_s, 2), waited_fraction=round(wait_s / max(wait_s + score_s, 1e-9), 3))
    else:
        result.update(scorer_idle_fraction=round(1 - score_s / manifest["engine"]["wall_s"], 3))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--batch-rows", type=int, default=500)
    parser.add_argument("--engines", default="beam,dask")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-overlap-")
    try:
        rollouts = os.path.join(workdir, "rollouts.parquet")
        write_synthetic_rollouts(rollouts, args.rows, seed=7)
        pq.write_table(pq.read_table(rollouts), rollouts, row_group_size=2 * args.batch_rows)
        model = build_tiny_reward_model(os.path.join(workdir, "tiny_rm"))
        results = []
        for engine in args.engines.split(","):
            for verify_ahead in ((2, 0) if engine == "beam" else (2,)):
                results.append(label(rollouts, model, os.path.join(workdir, "out"), engine, verify_ahead,
                                     args.batch_rows))
                print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    beam = {r["verify_ahead"]: r for r in results if r["engine"] == "beam"}
    if 0 in beam and 2 in beam:
        print(json.dumps({"summary": "beam overlap on vs off", "wall_on_s": beam[2]["wall_s"],
                          "wall_off_s": beam[0]["wall_s"], "speedup": round(beam[0]["wall_s"] / beam[2]["wall_s"], 3),
                          "waited_fraction_on": beam[2]["waited_fraction"],
                          "waited_fraction_off": beam[0]["waited_fraction"]}))


if __name__ == "__main__":
    main()
