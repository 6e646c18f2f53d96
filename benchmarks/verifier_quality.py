#!/usr/bin/env python
"""Verifier quality against labels: recall, precision, false-positive rate and accuracy per file.

    python benchmarks/verifier_quality.py FILE.parquet [FILE ...] [--show 20] [--check]
    python benchmarks/verifier_quality.py --shared          # the three labelled files in ../shared/data

Any Parquet with prompt/response/reference columns and a boolean `label_correct` works (data_source, if
present, picks the verifier as --verifier-sources says). Runs the verifier stage alone (the pool of
math-verify workers, no engine). Prints one JSON line per file (rows, judged correct, misses = labelled
correct but judged wrong, false positives = labelled wrong but judged correct, recall, precision,
false_positive_rate, accuracy, statuses) and then the disagreements to read: gold | extracted | label.
A null verdict (timeout, error, no/bad reference) counts as "judged wrong", as in the fusion.

--check compares the shared files with the counts this project has reached (gsm8k_gpt3_solutions: 0
disagreements; qwen25_math_cot100: at most 1; processbench_gsm8k_math: at most 2 misses and 3 false
positives) and exits 1 on any regression; CI runs it through tests/test_verifier_quality.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from transforms.verifier import VerifierConfig, VerifierPool  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
# The counts reached on the shared labelled files: (most misses, most false positives, most disagreements).
TARGETS = {
    "gsm8k_gpt3_solutions.parquet": (0, 0, 0),
    "qwen25_math_cot100.parquet": (1, 1, 1),
    "processbench_gsm8k_math.parquet": (2, 3, 5),
}


def measure(path: str, pool: VerifierPool, show: int) -> dict:
    columns = ["prompt", "response", "reference", "label_correct"]
    schema = pq.read_schema(path)
    if "data_source" in schema.names:
        columns.append("data_source")
    table = pq.read_table(path, columns=columns)
    references = table.column("reference").to_pylist()
    responses = table.column("response").to_pylist()
    sources = table.column("data_source").to_pylist() if "data_source" in columns else None
    started = time.perf_counter()
    scores, statuses, extracted = pool.verify(references, responses, sources)
    elapsed = time.perf_counter() - started
    labels = [bool(x) for x in table.column("label_correct").to_pylist()]
    judged = [s == 1.0 for s in scores]
    misses = [i for i in range(len(labels)) if labels[i] and not judged[i]]
    false_positives = [i for i in range(len(labels)) if judged[i] and not labels[i]]
    positives, predicted = sum(labels), sum(judged)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    result = {
        "file": os.path.basename(path), "rows": len(labels), "labelled_correct": positives,
        "judged_correct": predicted, "misses": len(misses), "false_positives": len(false_positives),
        "recall": round((positives - len(misses)) / max(positives, 1), 5),
        "precision": round((predicted - len(false_positives)) / max(predicted, 1), 5),
        "false_positive_rate": round(len(false_positives) / max(len(labels) - positives, 1), 5),
        "accuracy": round(1 - (len(misses) + len(false_positives)) / max(len(labels), 1), 5),
        "statuses": counts, "seconds": round(elapsed, 2),
    }
    print(json.dumps(result), flush=True)
    for kind, rows in (("miss", misses), ("false positive", false_positives)):
        for i in rows[:show]:
            tail = responses[i][-160:].replace("\n", " ")
            print(f"  {kind}: gold {references[i]!r} | extracted {extracted[i]!r} | status {statuses[i]} | "
                  f"...{tail!r}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--shared", action="store_true", help=f"the labelled files in {SHARED}")
    parser.add_argument("--show", type=int, default=20, help="disagreements printed per kind and file")
    parser.add_argument("--workers", type=int, default=None, help="verifier processes (default: all cores)")
    parser.add_argument("--verifier-sources", default="", help="data_source -> verifier, as in the pipeline")
    parser.add_argument("--check", action="store_true", help="exit 1 if a shared file regresses")
    args = parser.parse_args(argv)
    files = list(args.files) + ([os.path.join(SHARED, name) for name in TARGETS] if args.shared else [])
    if not files:
        parser.error("name Parquet files or --shared")
    failures = []
    with VerifierPool(VerifierConfig(num_workers=args.workers, sources=args.verifier_sources)) as pool:
        for path in files:
            result = measure(path, pool, args.show)
            target = TARGETS.get(result["file"])
            if args.check and target:
                most_misses, most_false_positives, most_disagreements = target
                if (result["misses"] > most_misses or result["false_positives"] > most_false_positives
                        or result["misses"] + result["false_positives"] > most_disagreements):
                    failures.append(f"{result['file']}: {result['misses']} misses, {result['false_positives']} "
                                    f"false positives (at most {most_misses}, {most_false_positives}, "
                                    f"{most_disagreements} in all)")
    for failure in failures:
        print(f"REGRESSION {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
