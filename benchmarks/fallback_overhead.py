#!/usr/bin/env python
"""What a configured fallback judge costs where no row is gated: the same run with and without one.

    python benchmarks/fallback_overhead.py [--rows 20000] [--repeats 3] [--engine beam] [--workers 2]

1. Generates synthetic rollouts (benchmarks/e2e_local.py's generator), labels them once without a judge, and
   keeps the first N rows the gate would not admit (transforms.judge.gated_rows on that output: the rules'
   rejections left are numeric mismatches and rows without an answer), in 10,000-row files. The runs'
   fallback_gated counter checks it: the benchmark stops if any row was gated.
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

from e2e_local import REPO, run_pipeline, write_inputs  # noqa: E402

sys.path.insert(0, REPO)


def ungated_inputs(workdir: str, inputs: str, args) -> None:
    """The first args.rows generated rows that the judge's gate would not admit, written under `inputs`."""
    import pyarrow.parquet as pq

    from schemas.rollouts import PROMPT_ID, SAMPLE_INDEX
    from transforms.judge import gated_rows

    generated, labelled = os.path.join(workdir, "generated"), os.path.join(workdir, "labelled")
    write_inputs(generated, args.rows * 3 // 2, per_prompt=8)
    run_pipeline(generated, labelled, args.engine, args.workers, [])
    verified = pq.read_table(os.path.join(labelled, "data"))
    gated = verified.filter(gated_rows(verified))
    drop = set(zip(gated.column(PROMPT_ID).to_pylist(), gated.column(SAMPLE_INDEX).to_pylist()))
    table = pq.read_table(generated)
    keys = zip(table.column(PROMPT_ID).to_pylist(), table.column(SAMPLE_INDEX).to_pylist())
    table = table.filter([key not in drop for key in keys]).slice(0, args.rows)
    if table.num_rows < args.rows:
        raise SystemExit(f"only {table.num_rows} ungated rows were generated; the benchmark needs {args.rows}")
    os.makedirs(inputs)
    for start in range(0, table.num_rows, 10_000):
        pq.write_table(table.slice(start, 10_000), os.path.join(inputs, f"rollouts-{start // 10_000:05d}.parquet"),
                       row_group_size=8192)
    shutil.rmtree(generated)
    shutil.rmtree(labelled)


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
    ungated_inputs(workdir, inputs, args)
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
            wall, _, manifest = run_pipeline(inputs, os.path.join(workdir, f"out-{side}"), args.engine, args.workers,
                                             extra)
            walls[side].append(round(wall, 2))
            if side == "with":
                gated.append(int(manifest["engine"]["counters"].get("fallback_gated", 0)))
                if gated[-1]:
                    raise SystemExit(f"{gated[-1]} rows were gated: this benchmark measures a run with none")
    medians = {side: statistics.median(values) for side, values in walls.items()}
    print(json.dumps({"benchmark": "fallback_overhead", "engine": args.engine, "workers": args.workers,
                      "rows": args.rows, "repeats": args.repeats, "wall_s": walls, "median_s": medians,
                      "with_over_without": round(medians["with"] / medians["without"], 4), "rows_gated": gated}))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
