#!/usr/bin/env python
"""Verifier quality against labels, and against plain math-verify: recall, precision, false-positive rate,
the rule behind every verdict, and the rows plain math-verify credits that the verifier rejects.

    python benchmarks/verifier_quality.py FILE.parquet [FILE ...] [--show 20] [--check] [--variants]
    python benchmarks/verifier_quality.py --shared [--check]   # the labelled files in ../shared/data
    python benchmarks/verifier_quality.py --table [--check]    # the hand-written table (tests/verifier_cases.py)

Any Parquet with prompt/response/reference columns and a boolean `label_correct` works (data_source, if
present, picks the verifier as --verifier-sources says; the prompt is the question the verifier sees).
Runs the verifier stage alone (the pool of math-verify workers, no engine), and plain math-verify
(transforms.verify.plain.plain_verdict: verify(parse(gold in $...$), parse(response))) in processes of its
own. Prints one JSON line per file: rows, judged correct, misses (labelled correct, judged wrong), false
positives (labelled wrong, judged correct), recall, precision, false_positive_rate, accuracy, statuses,
verdicts per verifier_rule, plain math-verify's recall and false-positive rate, `below_plain` (rows plain
credits and the verifier rejects without a refusal rule: the target is 0) and `refused_plain` (rows plain
credits that a refusal rule rejects, per rule). Then the disagreements to read: gold | extracted | label.
A null verdict (timeout, error, no/bad reference) counts as "judged wrong", as in the fusion.

--variants also judges each row's final answer written five ways (bare, \\boxed{}, after "The final answer
is", in $...$, in \\(...\\)): `variant_disagreements` counts rows where a form changes the verdict (rows the
plain path decided are left out: plain read another expression than that final answer), and the variants
join the differential. --table judges the table the same way (labels = its expected verdicts).

--fallback-verifier MODEL (with --fallback-backend, --fallback-template, --fallback-parse as in the pipeline)
also asks that judge about the rows its gate admits (pipeline/stages/fallback.py, addon mode) and adds a
"fallback" object: rows gated, the judge's verdicts, its flips onto rows labelled correct (right) and wrong
(wrong), and recall, precision and false-positive rate with its flips applied. This is how a judge's accuracy
is measured on your own labelled rollouts.

--check fails (exit 1) on any regression: the shared files' counts (gsm8k_gpt3_solutions: 0 disagreements;
qwen25_math_cot100: at most 1; processbench_gsm8k_math: at most 2 misses and 3 false positives), any row
below plain, any variant disagreement. CI runs `--shared --check` through tests/test_verifier_quality.py.
About 2 minutes for --shared on 2 cores (plain math-verify's share included), 5 with --variants.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from transforms.verify import VerifierConfig, VerifierPool, question_texts  # noqa: E402
from transforms.verify.answers import BARE_MAX_WORDS, final_answer  # noqa: E402
from transforms.verify.parts import join_math_spans  # noqa: E402
from transforms.verify.plain import plain_verdict  # noqa: E402
from transforms.verify.text import clean_text, strip_delimiters  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
# The counts reached on the shared labelled files: (most misses, most false positives, most disagreements).
TARGETS = {
    "gsm8k_gpt3_solutions.parquet": (0, 0, 0),
    "qwen25_math_cot100.parquet": (1, 1, 1),
    "processbench_gsm8k_math.parquet": (2, 3, 5),
}
# Labelled files measured without a count to hold: answer forms to read, labels from a looser judge.
OTHER_SHARED = ("mathodyssey_judged.parquet",)
ANSWER_FORMS = ("{}", "\\boxed{{{}}}", "The final answer is {}.", "${}$", "\\({}\\)")


def _plain_chunk(rows: list[tuple[str, str]]) -> list[bool]:
    import logging

    logging.disable(logging.WARNING)  # math-verify logs every timeout with its whole input
    return [isinstance(reference, str) and bool(reference.strip()) and plain_verdict(reference.strip(), response)
            for reference, response in rows]


def plain_verdicts(references: list, responses: list, executor: ProcessPoolExecutor) -> list[bool]:
    rows = list(zip(references, responses))
    chunks = [rows[i:i + 256] for i in range(0, len(rows), 256)]
    return [verdict for chunk in executor.map(_plain_chunk, chunks) for verdict in chunk]


def load(path: str) -> dict:
    schema = pq.read_schema(path)
    columns = [c for c in ("prompt", "response", "reference", "label_correct", "data_source") if c in schema.names]
    table = pq.read_table(path, columns=columns)
    return {
        "file": os.path.basename(path),
        "references": table.column("reference").to_pylist(),
        "responses": table.column("response").to_pylist(),
        "labels": [bool(x) for x in table.column("label_correct").to_pylist()],
        "questions": question_texts(table.column("prompt").to_pylist()) if "prompt" in columns else None,
        "sources": table.column("data_source").to_pylist() if "data_source" in columns else None,
    }


def load_table() -> dict:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from verifier_cases import TABLE

    return {"file": "tests/verifier_cases.py", "references": [c[1] for c in TABLE], "responses": [c[2] for c in TABLE],
            "labels": [c[3] for c in TABLE], "questions": [c[0] for c in TABLE], "sources": None}


def written_five_ways(response: str) -> list[str]:
    """The response's final answer bare, boxed, after "The final answer is", in $...$ and in \\(...\\); []
    when it has none, when it is prose or words around inline math (no model puts a sentence in math mode),
    or when its braces do not balance (an answer cut short cannot be boxed)."""
    found, _ = final_answer(clean_text(response or ""))
    if found is None or "\n" in found or found.count("{") != found.count("}"):
        return []
    joined = join_math_spans(found)
    answer = joined if joined != found else strip_delimiters(found)
    if re.search(r"(?<!\\)\$|\\\(", answer):
        return []  # words with math inside ("greater than $5$"): one expression is what goes in math mode
    prose = re.sub(r"\\[A-Za-z]+|\\text\{[^{}]*\}|\$[^$]*\$", " ", answer)
    if len(re.findall(r"[A-Za-z]{2,}", prose)) > BARE_MAX_WORDS:
        return []
    return [form.format(answer) for form in ANSWER_FORMS]


def variants(data: dict, rules: list) -> dict:
    """Each row's final answer written five ways, labelled as the row (rows the plain path decided left out:
    plain math-verify read another expression than that final answer)."""
    out = {key: [] for key in ("references", "responses", "labels", "questions", "sources", "origin")}
    for i, response in enumerate(data["responses"]):
        for written in ([] if rules[i] == "math_verify" else written_five_ways(response)):
            out["references"].append(data["references"][i])
            out["responses"].append(written)
            out["labels"].append(data["labels"][i])
            out["questions"].append(data["questions"][i] if data["questions"] else None)
            out["sources"].append(data["sources"][i] if data["sources"] else None)
            out["origin"].append(i)
    return out


def judge_flips(data: dict, verdicts, judge) -> dict:
    """The fallback judge (a set-up FallbackStage, addon mode) on the rows its gate admits: what it changes."""
    import pyarrow as pa

    scores, statuses, extracted, rules = verdicts
    questions = data["questions"] or [None] * len(scores)
    table = pa.table({"prompt": pa.array(questions, pa.string()), "reference": pa.array(data["references"], pa.string()),
                      "verifier_score": pa.array(scores, pa.float32()), "verifier_status": pa.array(statuses, pa.string()),
                      "extracted_answer": pa.array(extracted, pa.string()), "verifier_rule": pa.array(rules, pa.string())})
    counts: Counter = Counter()
    judged = judge.process(table, SimpleNamespace(count=lambda name, n: counts.update({name: n})))
    verdict = judged.column("fallback_verdict").to_pylist()
    after = [s == 1.0 for s in judged.column("verifier_score").to_pylist()]
    flipped = [v == "correct" for v in verdict]
    labels = data["labels"]
    positives, negatives = sum(labels), len(labels) - sum(labels)
    misses = sum(1 for a, label in zip(after, labels) if label and not a)
    false_positives = sum(1 for a, label in zip(after, labels) if a and not label)
    return {"gated": int(counts.get("fallback_gated", 0)),
            "verdicts": dict(sorted(Counter(v for v in verdict if v is not None).items())),
            "flips_right": sum(1 for f, label in zip(flipped, labels) if f and label),
            "flips_wrong": sum(1 for f, label in zip(flipped, labels) if f and not label),
            "recall": round((positives - misses) / max(positives, 1), 5),
            "precision": round((sum(after) - false_positives) / max(sum(after), 1), 5),
            "false_positive_rate": round(false_positives / max(negatives, 1), 5)}


def measure(data: dict, pool: VerifierPool, executor: ProcessPoolExecutor, show: int, with_variants: bool,
            judge=None) -> dict:
    references, responses, labels = data["references"], data["responses"], data["labels"]
    started = time.perf_counter()
    verdicts = pool.verify(references, responses, data["sources"], data["questions"])
    elapsed = time.perf_counter() - started
    scores, statuses, extracted, rules = verdicts
    plain = plain_verdicts(references, responses, executor)
    judged = [s == 1.0 for s in scores]
    misses = [i for i in range(len(labels)) if labels[i] and not judged[i]]
    false_positives = [i for i in range(len(labels)) if judged[i] and not labels[i]]
    below = [i for i in range(len(labels)) if plain[i] and not judged[i] and not (rules[i] or "").startswith("refused:")]
    refused_plain = Counter(rules[i] for i in range(len(labels)) if plain[i] and not judged[i] and i not in below)
    positives, negatives = sum(labels), len(labels) - sum(labels)
    plain_fp = sum(1 for p, label in zip(plain, labels) if p and not label)
    result = {
        "file": data["file"], "rows": len(labels), "labelled_correct": positives,
        "judged_correct": sum(judged), "misses": len(misses), "false_positives": len(false_positives),
        "recall": round((positives - len(misses)) / max(positives, 1), 5),
        "precision": round((sum(judged) - len(false_positives)) / max(sum(judged), 1), 5),
        "false_positive_rate": round(len(false_positives) / max(negatives, 1), 5),
        "accuracy": round(1 - (len(misses) + len(false_positives)) / max(len(labels), 1), 5),
        "plain_recall": round(sum(1 for p, label in zip(plain, labels) if p and label) / max(positives, 1), 5),
        "plain_false_positive_rate": round(plain_fp / max(negatives, 1), 5),
        "below_plain": len(below), "refused_plain": dict(sorted(refused_plain.items())),
        "rules": dict(sorted(Counter(r or "(none)" for r in rules).items())),
        "statuses": dict(sorted(Counter(statuses).items())), "seconds": round(elapsed, 2),
    }
    if judge is not None:
        result["fallback"] = judge_flips(data, verdicts, judge)
    if with_variants:
        forms = variants(data, rules)
        forms_verdicts = pool.verify(forms["references"], forms["responses"], forms["sources"], forms["questions"])
        forms_plain = plain_verdicts(forms["references"], forms["responses"], executor)
        changed = sorted({k for k, score in zip(forms["origin"], forms_verdicts.scores) if (score == 1.0) != judged[k]})
        result["variant_rows"] = len(forms["responses"])
        result["variant_disagreements"] = len(changed)
        result["variant_below_plain"] = sum(
            1 for p, score, rule in zip(forms_plain, forms_verdicts.scores, forms_verdicts.rules)
            if p and score != 1.0 and not (rule or "").startswith("refused:"))
        for k in changed[:show]:
            print(f"  variant changes the verdict: gold {references[k]!r} | response ...{responses[k][-120:]!r}")
    print(json.dumps(result), flush=True)
    for kind, rows in (("miss", misses), ("false positive", false_positives), ("below plain", below)):
        for i in rows[:show]:
            tail = (responses[i] or "")[-160:].replace("\n", " ")
            print(f"  {kind}: gold {references[i]!r} | extracted {extracted[i]!r} | {statuses[i]} {rules[i]} | "
                  f"...{tail!r}")
    return result


def regressions(result: dict) -> list[str]:
    failures = []
    target = TARGETS.get(result["file"])
    if target:
        most_misses, most_false_positives, most_disagreements = target
        if (result["misses"] > most_misses or result["false_positives"] > most_false_positives
                or result["misses"] + result["false_positives"] > most_disagreements):
            failures.append(f"{result['file']}: {result['misses']} misses, {result['false_positives']} false "
                            f"positives (at most {most_misses}, {most_false_positives}, {most_disagreements} in all)")
    for key in ("below_plain", "variant_disagreements", "variant_below_plain"):
        if result.get(key):
            failures.append(f"{result['file']}: {key} = {result[key]} (must be 0)")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--shared", action="store_true", help=f"the labelled files in {SHARED}")
    parser.add_argument("--table", action="store_true", help="the hand-written table in tests/verifier_cases.py")
    parser.add_argument("--variants", action="store_true", help="also judge each final answer written five ways")
    parser.add_argument("--show", type=int, default=20, help="disagreements printed per kind and file")
    parser.add_argument("--workers", type=int, default=None, help="verifier processes (default: all cores)")
    parser.add_argument("--verifier-sources", default="", help="data_source -> verifier, as in the pipeline")
    parser.add_argument("--check", action="store_true", help="exit 1 on a regression (see above)")
    parser.add_argument("--fallback-verifier", default=None, help="also measure this judge on the gated rows")
    parser.add_argument("--fallback-backend", default="transformers")
    parser.add_argument("--fallback-template", default="tinyv")
    parser.add_argument("--fallback-parse", default=None)
    args = parser.parse_args(argv)
    files = list(args.files)
    if args.shared:
        files += [os.path.join(SHARED, name) for name in (*TARGETS, *OTHER_SHARED)
                  if name in TARGETS or os.path.exists(os.path.join(SHARED, name))]
    if not files and not args.table:
        parser.error("name Parquet files, --shared or --table")
    failures = []
    config = VerifierConfig(num_workers=args.workers, sources=args.verifier_sources)
    judge = None
    if args.fallback_verifier:
        from pipeline.stages.base import WorkerContext
        from pipeline.stages.fallback import FallbackStage
        from transforms.judge import JudgeConfig

        judge = FallbackStage(JudgeConfig(model=args.fallback_verifier, backend=args.fallback_backend, mode="addon",
                                          template=args.fallback_template, parse=args.fallback_parse))
        judge.backend.identity()  # resolved (and checked) before any row is verified
        judge.setup(WorkerContext())
    with VerifierPool(config) as pool, ProcessPoolExecutor(max(1, pool.num_workers)) as executor:
        datasets = ([load_table()] if args.table else []) + [load(path) for path in files]
        for data in datasets:
            failures += regressions(measure(data, pool, executor, args.show, args.variants or data["file"].endswith(".py"),
                                            judge))
    if judge is not None:
        judge.close()
    for failure in failures:
        print(f"REGRESSION {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
