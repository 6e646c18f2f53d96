#!/usr/bin/env python
"""Verifier stage throughput: the pool with 1 and 2 worker processes against plain math-verify.

    python benchmarks/verifier_throughput.py [--rows 4000] [--workers 1,2]

Rows: the labelled files in ../shared/data (GSM8K "A: N" solutions, Qwen2.5-Math boxed CoT, ProcessBench
steps), cycled up to --rows; without them, the demo's synthetic rollouts. The same rows for every side:
- plain: one process, math-verify as a user would call it: parse the gold (once per distinct reference,
  as the pool does) and the response, then verify;
- pool(N): VerifierPool with N workers (start-up excluded: workers are started and warmed first), the
  verifier stage alone, no engine.
Prints one JSON line: rows, plain_rows_per_s, pool_rows_per_s per N, scaling = r(2) / (2 * r(1)) (target
>= 0.9), and per_row_per_worker = (N / r(N)) / (1 / plain) (target <= 1.5: the project's extraction and
normalization cost little next to math-verify itself, and plain math-verify runs again only on the rows the
project's own path does not credit). The pool gets each row's question, as in a pipeline run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from transforms.verify import VerifierConfig, VerifierPool, question_texts  # noqa: E402
from transforms.verify.plain import plain_wrap  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
FILES = ("gsm8k_gpt3_solutions.parquet", "qwen25_math_cot100.parquet", "processbench_gsm8k_math.parquet")


def load_rows(rows: int) -> tuple[list[str], list[str], list[str | None], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [os.path.join(SHARED, name) for name in FILES if os.path.exists(os.path.join(SHARED, name))]
    if paths:
        table = pa.concat_tables([pq.read_table(p, columns=["prompt", "reference", "response"]) for p in paths])
        source = "shared labelled files"
    else:
        from pipeline.tools.demo import synthetic_rollouts

        table = synthetic_rollouts(rows, seed=0).select(["prompt", "reference", "response"])
        source = "synthetic rollouts"
    references = table.column("reference").to_pylist()
    responses = table.column("response").to_pylist()
    questions = question_texts(table.column("prompt").to_pylist())
    # Interleave the files (every k-th row) so any prefix mixes them; cycle to the requested count.
    order = sorted(range(len(references)), key=lambda i: (i * 7919) % len(references))
    picked = [order[i % len(order)] for i in range(rows)]
    return [references[i] for i in picked], [responses[i] for i in picked], [questions[i] for i in picked], source


def plain_math_verify(references: list[str], responses: list[str], timeout_s: int) -> float:
    from math_verify import parse, verify

    started = time.perf_counter()
    golds: dict[str, list] = {}
    for reference, response in zip(references, responses):
        if reference not in golds:
            golds[reference] = parse(plain_wrap(reference), parsing_timeout=timeout_s)
        predicted = parse(response, parsing_timeout=timeout_s)
        if golds[reference] and predicted:
            verify(golds[reference], predicted, timeout_seconds=timeout_s)
    return time.perf_counter() - started


def pool_seconds(references: list[str], responses: list[str], questions: list, workers: int, timeout_s: int) -> float:
    with VerifierPool(VerifierConfig(num_workers=workers, timeout_s=timeout_s)) as pool:
        pool.verify(["1"] * workers * 2, ["\\boxed{1}"] * workers * 2)  # every worker started and warm
        started = time.perf_counter()
        pool.verify(references, responses, None, questions)
        return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--timeout", type=int, default=5, help="math-verify's timeout, seconds")
    args = parser.parse_args(argv)
    references, responses, questions, source = load_rows(args.rows)
    plain_s = plain_math_verify(references, responses, args.timeout)
    result = {"rows": args.rows, "source": source, "plain_s": round(plain_s, 2),
              "plain_rows_per_s": round(args.rows / plain_s, 1)}
    rates = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        seconds = pool_seconds(references, responses, questions, workers, args.timeout)
        rates[workers] = args.rows / seconds
        result[f"pool{workers}_s"] = round(seconds, 2)
        result[f"pool{workers}_rows_per_s"] = round(rates[workers], 1)
        result[f"pool{workers}_per_row_per_worker_vs_plain"] = round((workers / rates[workers]) / (plain_s / args.rows), 3)
    if 1 in rates and 2 in rates:
        result["scaling"] = round(rates[2] / (2 * rates[1]), 3)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
