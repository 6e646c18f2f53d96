"""What the verifier decides: the hand-written table (tests/verifier_cases.py), the bare-answer rule,
verifiers per data_source, and the counts on the real labelled files (benchmarks/verifier_quality.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline.config import build_config
from transforms.answers import final_answer, is_bare_answer
from transforms.verifier import VerifierConfig, VerifierPool, verify_table
from verifier_cases import CASES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def in_process():
    pool = VerifierPool(VerifierConfig(num_workers=0, timeout_s=2, hard_timeout_s=10))
    pool.start()
    return pool


def test_the_table_is_large_and_balanced():
    assert len(CASES) >= 200
    assert sum(1 for case in CASES if not case[2]) >= 0.3 * len(CASES)  # plenty of near misses
    assert len({(g, r) for g, r, _, _ in CASES}) == len(CASES)  # no pair twice


@pytest.mark.parametrize("gold,response,expected,why", CASES, ids=[c[3][:60] for c in CASES])
def test_verdict(in_process, gold, response, expected, why):
    scores, statuses, extracted = in_process.verify([gold], [response])
    assert (scores[0] == 1.0) is expected, (why, statuses[0], extracted[0])


@pytest.mark.parametrize("text,bare", [
    ("\\frac{1}{2}", True),  # LaTeX only
    ("x = 3", True),  # a labelled value
    ("twenty-one", True),  # a number in words
    ("x=1 \\text{ or } x=2", True),  # words inside \text are few
    ("Minimum: 1", True),  # a worded label
    ("(B)", True),  # an option letter
    ("The area of the square is 16.", False),  # a sentence
    ("First, 2 + 2 = 4.\nThen 4 * 3 = 12.", False),  # several lines: a chain of thought
    ("x" * 201, False),  # longer than 200 characters
    ("", False),  # nothing
])
def test_bare_answer_rule(text, bare):
    assert is_bare_answer(text) is bare


@pytest.mark.parametrize("response", [
    "We compute 3 + 4 = 7 and then double it to get 14, which is what the question asks for.",
    "Let x be the number.\nThen 2x = 14, so x = 7.",
    "The first step gives 12. The second step gives 12 again. Everything checks out nicely here.",
])
def test_a_chain_of_thought_is_never_judged_whole(response):
    assert final_answer(response) == (None, "none")


def table(references, responses, sources):
    return pa.table({"reference": references, "response": responses, "data_source": sources})


@pytest.mark.parametrize("sources,reference,response,expected,extracted", [
    # exact: string equality of the final answer (delimiters and whitespace aside), no math
    ("t=exact", "Paris", "The answer is Paris.", 1.0, "Paris"),
    ("t=exact", "1/2", "The answer is 0.5.", 0.0, "0.5"),  # equal numbers, different strings
    # numeric with an absolute tolerance from the config
    ("t=numeric:0.01", "3.14159", "The answer is 3.145.", 1.0, "3.145"),
    ("t=numeric:0.001", "3.14159", "The answer is 3.145.", 0.0, "3.145"),
    ("t=numeric:0.5", "10", "#### 10{,}000", 0.0, "10000.0"),  # thousands separators still read as such
    # choice: the option letter
    ("t=choice", "B", "After elimination, the answer is (B) 12.", 1.0, "B"),
    ("t=choice", "B", "The answer is C", 0.0, "C"),
    # a custom verifier by import path: (reference, response, timeout_s) -> (score, status, extracted)
    ("t=judges:length_matches", "abc", "xyz", 1.0, "3"),
    # a source not in the mapping gets math
    ("other=exact", "\\frac{1}{2}", "The answer is 0.5.", 1.0, "0.5"),
])
def test_verifier_per_data_source(sources, reference, response, expected, extracted):
    pool = VerifierPool(VerifierConfig(num_workers=0, sources=sources))
    pool.start()
    out = verify_table(table([reference], [response], ["t"]), pool)
    assert out.column("verifier_score").to_pylist() == [expected]
    assert out.column("extracted_answer").to_pylist() == [extracted]


def test_the_same_rows_split_by_source_in_worker_processes():
    config = VerifierConfig(num_workers=2, sources="exact_src=exact,mc=choice")
    with VerifierPool(config) as pool:
        scores, statuses, _ = pool.verify(["1/2", "1/2", "A", "A"], ["The answer is 0.5.", "0.5", "(A)", "0.5"],
                                          ["exact_src", "math_src", "mc", "mc"])
    assert scores == [0.0, 1.0, 1.0, 0.0] and statuses == ["ok", "ok", "ok", "no_answer"]


@pytest.mark.parametrize("sources,message", [
    ("gsm8k=numeric:-1", "tolerance"),
    ("gsm8k=numeric:abc", "tolerance"),
    ("gsm8k=fuzzy", "unknown verifier"),
    ("gsm8k", "SOURCE=VERIFIER"),
    ("gsm8k=no.such.module:fn", "verifier.sources"),
])
def test_bad_verifier_sources_fail_before_any_data_moves(sources, message):
    with pytest.raises(ValueError, match=message):
        VerifierConfig(sources=sources)


def test_sources_reach_the_config_from_the_cli_and_yaml():
    config = build_config({"input": "x.parquet", "output": "out", "rm_backend": "none",
                           "verifier_sources": "gsm8k=numeric:0.01"})
    assert config.verifier.source_verifiers() == {"gsm8k": "numeric:0.01"}
    assert config.labeling_dict()["verifier"]["sources"] == "gsm8k=numeric:0.01"  # it decides labels
    import yaml

    options = yaml.safe_load("input: x.parquet\noutput: out\nrm_backend: none\nverifier_sources:\n  mmlu: choice\n")
    assert build_config(options).verifier.source_verifiers() == {"mmlu": "choice"}  # a YAML mapping works too


@pytest.mark.slow
def test_quality_on_the_shared_labelled_files_does_not_regress():
    """gsm8k_gpt3_solutions 0 disagreements, qwen25_math_cot100 at most 1, processbench_gsm8k_math at most
    2 misses and 3 false positives: benchmarks/verifier_quality.py --check fails on any regression."""
    finished = subprocess.run([sys.executable, "benchmarks/verifier_quality.py", "--shared", "--check", "--show", "0"],
                              cwd=REPO, capture_output=True, text=True, timeout=280)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.count('"file"') == 3
