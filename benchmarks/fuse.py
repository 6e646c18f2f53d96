#!/usr/bin/env python
"""`herolabel fuse` against the full run it replaces, on the same rows in the same invocation.

    python benchmarks/fuse.py [--rows 1000000] [--engine beam] [--workers 2] [--full-gdpo] [--workdir DIR]

1. Generates N synthetic rollouts with a precomputed RM score column (the e2e benchmark's generator,
   benchmarks/e2e_local.py: 8 per prompt, 10,000-row files).
2. The full run: `run_pipeline.py --engine E --rm-score-column bench_rm_score` (HERO, pairs on) in a
   child process with its memory sampled; with --full-gdpo also one with `--fusion gdpo`.
3. `herolabel fuse` of the HERO output to gdpo, and of that back to HERO (the full run's output again),
   each in a child process with its peak PSS sampled (the child and its descendants, every 0.2 s).
Prints one JSON line: wall seconds of each, the speed-up of fuse over the full run that writes the same
bytes (full HERO wall / fuse-back-to-HERO wall; with --full-gdpo also full gdpo / fuse to gdpo), the peak
PSS of each fuse, and whether data/ and pairs/ of the fused outputs equal the full runs' byte for byte.
Targets: speed-up >= 50 at 1M rows, peak memory <= 1 GiB.
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

from e2e_local import REPO, run_pipeline, run_sampled, write_inputs  # noqa: E402


def run_fuse(source: str, output: str, fusion: str) -> tuple[float, dict]:
    return run_sampled([sys.executable, os.path.join(REPO, "run_pipeline.py"), "fuse", source, "--fusion", fusion,
                        "--output", output, "--overwrite"], "fuse")


def digests(output: str, part: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(output, part).glob("*.parquet"))}


def same(a: str, b: str) -> bool:
    return all(digests(a, part) == digests(b, part) for part in ("data", "pairs")) and bool(digests(a, "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engine", default="beam")
    parser.add_argument("--workers", type=int, default=2, help="verifier workers of the full runs (default 2)")
    parser.add_argument("--full-gdpo", action="store_true",
                        help="also a full run with --fusion gdpo, compared with fuse's gdpo output (doubles the time)")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-fuse-bench-")
    try:
        inputs = os.path.join(workdir, "input")
        write_inputs(inputs, args.rows, 8)
        out = {name: os.path.join(workdir, name) for name in ("hero", "gdpo", "fused_gdpo", "back")}
        full_hero, hero_memory, manifest = run_pipeline(inputs, out["hero"], args.engine, args.workers, ["--pairs"])
        fuse_gdpo, fuse_gdpo_memory = run_fuse(out["hero"], out["fused_gdpo"], "gdpo")
        fuse_back, fuse_back_memory = run_fuse(out["fused_gdpo"], out["back"], "hero")
        result = {
            "rows": args.rows, "output_rows": manifest["output_rows"], "engine": args.engine,
            "verifier_workers": args.workers,
            "full_hero_s": round(full_hero, 2), "fuse_to_gdpo_s": round(fuse_gdpo, 2),
            "fuse_back_to_hero_s": round(fuse_back, 2),
            # the same output (byte for byte) two ways: the full run, and fuse from the gdpo output
            "speedup_back_vs_full_hero": round(full_hero / fuse_back, 1),
            "speedup_gdpo_vs_full_hero": round(full_hero / fuse_gdpo, 1),
            "full_peak_pss_mb": hero_memory["peak_pss_mb"],
            "fuse_peak_pss_mb": max(fuse_gdpo_memory["peak_pss_mb"], fuse_back_memory["peak_pss_mb"]),
            "fuse_peak_rss_mb": max(fuse_gdpo_memory["peak_rss_mb"], fuse_back_memory["peak_rss_mb"]),
            "back_to_hero_bytes_equal_original": same(out["back"], out["hero"]),
        }
        if args.full_gdpo:
            full_gdpo, gdpo_memory, _ = run_pipeline(inputs, out["gdpo"], args.engine, args.workers,
                                                     ["--pairs", "--fusion", "gdpo"])
            result.update(full_gdpo_s=round(full_gdpo, 2), speedup_vs_full_gdpo=round(full_gdpo / fuse_gdpo, 1),
                          gdpo_bytes_equal_full_run=same(out["fused_gdpo"], out["gdpo"]))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
