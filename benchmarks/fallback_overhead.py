#!/usr/bin/env python
"""What a configured fallback judge costs where no row is gated: the same run with and without one.

    python benchmarks/fallback_overhead.py [--rows 20000] [--repeats 3] [--engine beam] [--workers 2]

1. Generates N synthetic rollouts (benchmarks/e2e_local.py's generator) whose rule rejections are all numeric
   mismatches against a numeric gold, so the gate admits none of them (the run's fallback_gated counter says
   how many it did admit; the benchmark stops if any was).
2. Builds a tiny random causal LM offline as the judge (transformers backend) and a FILE template.
3. Runs, alternating, `--repeats` times each: the pipeline without a judge, and the same command with
   `--fallback-verifier` (precomputed RM scores both times), each in a child process.
Prints one JSON line: each side's wall seconds per run and median, the median ratio with / without
(target: within 5 %), and the rows gated. The judge model is resolved on the driver (its config read and
fingerprinted) but, with nothing gated, never loaded on a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e_local import REPO, run_sampled, worker_flags, write_inputs  # noqa: E402

sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default="beam")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from pipeline.tools.demo import build_tiny_causal_lm

    workdir = tempfile.mkdtemp(prefix="herolabel-fallback-overhead-")
    inputs = os.path.join(workdir, "rollouts")
    write_inputs(inputs, args.rows, per_prompt=8)
    judge = build_tiny_causal_lm(os.path.join(workdir, "judge"), seed=0)
    template = os.path.join(workdir, "judge.j2")
    with open(template, "w") as handle:
        handle.write("Question: {{ question }}\nGold: {{ gold }}\nAnswer: {{ answer }}\nVerdict:")
    judge_flags = ["--fallback-verifier", judge, "--fallback-backend", "transformers", "--fallback-template", template,
                   "--fallback-parse", r"(?P<correct>yes)|(?P<incorrect>no)"]
    walls: dict[str, list[float]] = {"without": [], "with": []}
    gated = []
    for repeat in range(args.repeats):
        for side, extra in (("without", []), ("with", judge_flags)):
            output = os.path.join(workdir, f"out-{side}")
            command = [sys.executable, os.path.join(REPO, "run_pipeline.py"), "--input", inputs, "--output", output,
                       "--rm-backend", "precomputed", "--rm-score-column", "bench_rm_score", "--progress", "off",
                       "--engine", args.engine, *worker_flags(args.engine, args.workers), "--overwrite", *extra]
            wall, _ = run_sampled(command, f"{side} judge, run {repeat + 1}")
            walls[side].append(round(wall, 2))
            if side == "with":
                with open(os.path.join(output, "manifest.json")) as handle:
                    counters = json.load(handle)["engine"]["counters"]
                gated.append(int(counters.get("fallback_gated", 0)))
                if gated[-1]:
                    raise SystemExit(f"{gated[-1]} rows were gated: this benchmark measures a run with none")
    medians = {side: statistics.median(values) for side, values in walls.items()}
    print(json.dumps({"benchmark": "fallback_overhead", "engine": args.engine, "workers": args.workers,
                      "rows": args.rows, "repeats": args.repeats, "wall_s": walls, "median_s": medians,
                      "with_over_without": round(medians["with"] / medians["without"], 4), "rows_gated": gated}))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
