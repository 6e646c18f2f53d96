#!/usr/bin/env python
"""Verifier quality on real labelled rollouts: the pipeline's verifier_score against each source's own label.

    python benchmarks/verifier_agreement.py [--data ../shared/data]

Runs the full pipeline with --rm-backend none on every labelled file in the data folder and prints one JSON
line per file: rows, agreement, recall (labelled-correct judged correct), false-positive rate
(labelled-wrong judged correct), and verifier_status counts. A null verdict (timeout, error, no/bad
reference) counts as 0, as it does in the fusion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline.config import build_config  # noqa: E402
from pipeline.run import run  # noqa: E402

FILES = ("gsm8k_gpt3_solutions.parquet", "qwen25_math_cot100.parquet", "processbench_gsm8k_math.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data"))
    args = parser.parse_args()
    for name in FILES:
        with tempfile.TemporaryDirectory() as output:
            manifest = run(build_config({"input": os.path.join(args.data, name), "output": output,
                                         "rm_backend": "none", "progress": "off"}), show_progress=False)
            table = pq.read_table(os.path.join(output, "data"), columns=["verifier_score", "label_correct"])
        judged = [bool(s) for s in table.column("verifier_score").to_pylist()]
        labels = table.column("label_correct").to_pylist()
        positives = sum(labels)
        print(json.dumps({
            "file": name,
            "rows": table.num_rows,
            "agreement": round(sum(j == lab for j, lab in zip(judged, labels)) / table.num_rows, 5),
            "recall": round(sum(j and lab for j, lab in zip(judged, labels)) / max(positives, 1), 5),
            "false_positive_rate": round(sum(j and not lab for j, lab in zip(judged, labels))
                                         / max(table.num_rows - positives, 1), 5),
            "verifier_status": manifest["status_counts"]["verifier_status"],
        }))


if __name__ == "__main__":
    main()
