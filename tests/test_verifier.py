"""Verifier stage: verdicts on real model outputs, statuses, and the process pool's failure handling."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import subprocess
import sys

import pyarrow as pa
import pytest

from transforms.checks import stored_settings
from transforms.verify import VERIFIERS, Builtin, Verifier, VerifierConfig, VerifierPool, sources_help, verify_table
from transforms.verify.math import judge_response, parse_reference
from transforms.verify.registry import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (reference, response, expected score, expected status, expected extracted answer)
CASES = [
    # GPT-3 6B solution from GSM8K (gsm8k_gpt3_solutions): wrong final "A: 26" against gold 18.
    ("18", "She has 13 ducks eggs and she sells 2 each day so she makes 13 * 2 = $<<13*2=26>>26\nA: 26",
     0.0, "ok", "26"),
    # A correct GSM8K solution in the same "A: N" form.
    ("18", "16 - 3 - 4 = <<16-3-4=9>>9 eggs\n9 * 2 = $<<9*2=18>>18\nA: 18", 1.0, "ok", "18"),
    # Qwen2.5-Math CoT ending (qwen25_math_cot100): \boxed inside \( \).
    ("420", "the value ... to the nearest whole number is \\(\\boxed{420}\\).", 1.0, "ok", "420"),
    # ProcessBench (Qwen2-7B-Instruct) wrong boxed answer.
    ("24", "The answer is \\(\\boxed{30}\\).", 0.0, "ok", "30"),
    # LaTeX fraction reference, decimal response: math-verify compares values; extracted is what was compared.
    ("\\frac{1}{2}", "The final answer is $\\boxed{0.5}$.", 1.0, "ok", "0.5"),
    # Bare equation reference: needs $...$ to parse as f(x) = 2x rather than "2".
    ("f(x)=2 x", "Therefore $\\boxed{f(x) = 2x}$.", 1.0, "ok", "2x"),
    # Bare interval reference.
    ("(1,2)", "The solution set is $\\boxed{(1, 2)}$.", 1.0, "ok", "(1, 2)"),
    # ProcessBench gold with an escaped dollar and thin space: an escaped \$ is not a math delimiter.
    ("\\$32,\\!348", "So the final amount is $\\boxed{32348}$.", 1.0, "ok", "32348"),
    # MATH gold with a braced thousands separator (qwen25_math_cot100).
    ("10{,}000", "The answer is $\\boxed{10000}$.", 1.0, "ok", "10000"),
    # Expanded polynomial, right and with swapped coefficients.
    ("x^2 + 7x + 12", "Expanding gives $\\boxed{x^2+7x+12}$.", 1.0, "ok", "x^2+7x+12"),
    ("x^2 + 7x + 12", "Expanding gives $\\boxed{x^2+12x+7}$.", 0.0, "ok", "x^2+12x+7"),
    # Multiple-choice gold written as \text{(C)}.
    ("\\text{(C)}", "The answer is $\\boxed{C}$.", 1.0, "ok", "C"),
    # A response with no extractable answer is judged wrong, with its own status.
    ("18", "I cannot work this out.", 0.0, "no_answer", None),
    # Missing and blank references cannot be judged.
    (None, "The answer is 3", None, "no_reference", None),
    ("  ", "The answer is 3", None, "no_reference", None),
    # A reference math-verify cannot parse at all.
    ("\\text{}", "The answer is $\\boxed{3}$.", None, "bad_reference", None),
    # 9^(9^9) cannot be compared within any timeout: status timeout, never a silent 0.
    ("5", "$\\boxed{9^{9^{9}}}$", None, "timeout", "9^{9^{9}}"),
]


# math-verify's timeout for the cases that expect a verdict: well above their cost (tens of ms) so that a loaded
# CI machine cannot turn a verdict into a timeout (a polynomial comparison once took over 1 s under load);
# a case that expects a timeout keeps 1 s, since it would exceed any limit.
VERDICT_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(VerifierConfig(num_workers=2, timeout_s=VERDICT_TIMEOUT_S, hard_timeout_s=20)) as running:
        yield running


@pytest.mark.parametrize("reference,response,score,status,extracted", CASES)
def test_judgement_in_process(reference, response, score, status, extracted):
    timeout_s = 1 if status == "timeout" else VERDICT_TIMEOUT_S
    in_process = VerifierPool(VerifierConfig(num_workers=0, timeout_s=timeout_s, hard_timeout_s=20))
    in_process.start()
    scores, statuses, answers, _ = in_process.verify([reference], [response])
    assert (scores[0], statuses[0], answers[0]) == (score, status, extracted)


def test_worker_pool_matches_in_process_verdicts(pool):
    scores, statuses, answers, _ = pool.verify([c[0] for c in CASES], [c[1] for c in CASES])
    assert list(zip(scores, statuses, answers)) == [(c[2], c[3], c[4]) for c in CASES]


def test_verify_table_adds_typed_columns(pool):
    table = pa.table({"reference": ["18", "18", None], "response": ["A: 18", "A: 26", "A: 1"]})
    out = verify_table(table, pool)
    assert out.schema.field("verifier_score").type == pa.float32()
    assert out.column("verifier_score").to_pylist() == [1.0, 0.0, None]
    assert out.column("verifier_status").to_pylist() == ["ok", "ok", "no_reference"]
    assert out.column("extracted_answer").to_pylist() == ["18", "26", None]


@pytest.mark.parametrize("reference,text,value", [
    ("18", "18", "18"),  # bare integer
    ("f(x)=2 x", "2 x", "2*x"),  # bare function definition: its label is set aside, x remembered
    ("x^2+1", "x^2+1", "x**2 + 1"),  # plain-text extraction alone finds nothing
    ("$18$", "18", "18"),  # already delimited
    ("10{,}000", "10000", "10000"),  # braced thousands separator
    ("\\text{(C)}", "\\text{(C)}", None),  # a multiple-choice letter: judged by letter
])
def test_bare_references_parse(reference, text, value):
    gold = parse_reference(reference, timeout_s=2)
    assert gold is not None and gold.text == text
    if value is None:
        assert gold.choice == "C"
    else:
        assert str(gold.parsed[0]) == value


@pytest.mark.parametrize("marker,status", [("HANG forever", "timeout"), ("CRASH now", "error")])
def test_the_row_a_worker_stops_on_is_blamed_even_with_results_unsent(marker, status):
    """Results travel in messages of several rows; rows judged but not yet sent when the worker hangs or
    dies are judged again, and only the row it stopped on (read from its progress file) is blamed."""
    judge = "judges:hangs_on_marker" if "HANG" in marker else "judges:dies_on_marker"
    config = VerifierConfig(num_workers=1, timeout_s=1, hard_timeout_s=3, task_size=64, judge=judge)
    responses = ["A: 18"] * 25 + [marker] + ["A: 7"] * 10
    with VerifierPool(config) as pool:
        scores, statuses, _, _ = pool.verify(["18"] * len(responses), responses)
        assert pool.restarts == 1
    assert statuses == ["ok"] * 25 + [status] + ["ok"] * 10
    assert scores == [1.0] * 25 + [None] + [0.0] * 10


def test_hung_worker_is_killed_and_only_its_row_times_out():
    config = VerifierConfig(num_workers=2, timeout_s=1, hard_timeout_s=3, task_size=2, judge="judges:hangs_on_marker")
    responses = ["A: 18", "A: 7", "HANG forever", "A: 18", "A: 3", "A: 18"]
    with VerifierPool(config) as hanging_pool:
        scores, statuses, _, _ = hanging_pool.verify(["18"] * len(responses), responses)
        assert hanging_pool.restarts == 1
        # The replacement worker keeps serving later batches.
        assert hanging_pool.verify(["7"], ["A: 7"])[0] == [1.0]
    assert statuses == ["ok", "ok", "timeout", "ok", "ok", "ok"]
    assert scores == [1.0, 0.0, None, 1.0, 0.0, 1.0]


def test_crashed_worker_marks_its_row_error_and_work_continues():
    config = VerifierConfig(num_workers=1, timeout_s=1, hard_timeout_s=10, task_size=4, judge="judges:dies_on_marker")
    responses = ["A: 1", "CRASH now", "A: 2", "A: 1"]
    with VerifierPool(config) as crashing_pool:
        scores, statuses, _, _ = crashing_pool.verify(["1"] * 4, responses)
    assert statuses == ["ok", "error", "ok", "ok"]
    assert scores == [1.0, None, 0.0, 1.0]


@pytest.mark.parametrize("kwargs,message", [
    ({"timeout_s": 1.5}, "verifier.timeout_s must be a whole number"),  # a float alarm silently fails
    ({"timeout_s": 0}, "verifier.timeout_s"),
    ({"num_workers": -1}, "verifier.num_workers"),
    ({"timeout_s": 5, "hard_timeout_s": 5}, "verifier.hard_timeout_s"),  # must exceed the inner timeout
    ({"task_size": 0}, "verifier.task_size"),
    ({"judge": "not a path"}, "verifier.judge"),
])
def test_invalid_verifier_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VerifierConfig(**kwargs)


def test_the_default_judge_names_judge_response_by_a_stable_alias():
    """The settings stored in every shard (dataclasses.asdict) and the resume fingerprint keep their bytes:
    the default judge's name resolves to the math judge, and no module of that old name exists."""
    assert list(dataclasses.asdict(VerifierConfig()).items()) == [
        ("num_workers", None), ("timeout_s", 5), ("hard_timeout_s", 30.0), ("task_size", 32),
        ("judge", "transforms.verifier:judge_response"), ("sources", ""), ("cache_dir", None)]
    # The cache directory (set from --cache-dir) is where verdicts are kept, not a setting of a label.
    assert "cache_dir" not in stored_settings(VerifierConfig(cache_dir="/tmp/cache"))
    assert load(VerifierConfig().judge) is judge_response
    assert importlib.util.find_spec(VerifierConfig().judge.partition(":")[0]) is None


def test_a_builtin_verifier_is_one_registry_entry(monkeypatch):
    def length(argument, config):  # "length:N": correct when the response has N characters
        return Verifier(lambda reference, timeout_s: int(argument),
                        lambda gold, response, timeout_s: (float(len(response) == gold), "ok", str(len(response))))

    monkeypatch.setitem(VERIFIERS, "length:N", Builtin(length, "response length"))
    assert "`length:N` (response length), or a function by import path" in sources_help()
    pool = VerifierPool(VerifierConfig(num_workers=0, sources="t=length:3"))
    pool.start()
    verdicts = pool.verify(["x", "x"], ["abc", "ab"], ["t", "t"])
    assert verdicts == ([1.0, 0.0], ["ok", "ok"], ["3", "2"], ["length:3"] * 2)
    with pytest.raises(ValueError, match="unknown verifier 'length': use math, exact, numeric:TOL, choice, length:N"):
        VerifierConfig(sources="t=length")  # its argument is part of its name


def test_importing_the_package_loads_no_verifier():
    code = ("import sys, transforms.verify; "
            "print([m for m in ('math_verify', 'sympy', 'transforms.verify.math') if m in sys.modules])")
    finished = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "[]"


def test_a_worker_that_died_while_idle_is_replaced_without_blaming_a_row():
    config = VerifierConfig(num_workers=1, timeout_s=1, hard_timeout_s=20)
    with VerifierPool(config) as idle_pool:
        assert idle_pool.verify(["2"], ["\\boxed{2}"])[1] == ["ok"]
        worker = idle_pool._workers[0]  # noqa: SLF001 - the test kills the real process
        worker.process.kill()
        worker.process.wait()
        scores, statuses, _, _ = idle_pool.verify(["2", "3"], ["\\boxed{2}", "\\boxed{4}"])
        assert (scores, statuses) == ([1.0, 0.0], ["ok", "ok"])
        assert idle_pool.restarts == 1


def adversarial_corpus(seed: int = 0) -> list[tuple[str, str, str]]:
    """1,200 generated (kind, reference, response) rows of the kinds that break verifiers. The expensive
    kinds (each costs math-verify its whole timeout) are fewer, so the test stays within minutes."""
    rng = random.Random(seed)

    def nested(depth: int) -> str:
        return "\\frac{" * depth + "1" + "}{2}" * depth

    def junk(size: int) -> str:
        return bytes(rng.getrandbits(8) for _ in range(size)).decode("latin-1")

    kinds = [
        # (kind, rows, maker)
        ("huge exponent", 30, lambda: (f"2^{{{rng.randint(10**6, 10**9)}}}",
                                       f"\\boxed{{{rng.randint(2, 9)}^{{{rng.randint(10**8, 10**12)}}}}}")),
        ("deeply nested LaTeX", 30, lambda: (nested(rng.randint(50, 400)), f"\\boxed{{{nested(rng.randint(50, 400))}}}")),
        ("megabyte string", 12, lambda: ("1", "\\boxed{" + "1+" * rng.randint(3 * 10**5, 5 * 10**5) + "1}")),
        ("power tower", 12, lambda: ("\\sqrt{" * 30 + "2" + "}" * 30, "$" + "x^" * 500 + "2$")),
        ("unbalanced braces", 400, lambda: ("{" * rng.randint(1, 50) + str(rng.randint(0, 9)),
                                            "}" * rng.randint(1, 50) + "\\boxed{{{" + "\\left(" * rng.randint(0, 20))),
        ("binary junk", 400, lambda: (junk(rng.randint(1, 80)), junk(rng.randint(100, 4000)))),
        ("long answerless text", 300, lambda: (str(rng.randint(0, 99)), " ".join(
            rng.choice(["so", "then", "=", "\\(", "\\)", "$", "x", "\\\\", "\\frac", "{", "}"]) for _ in range(3000)))),
        ("NUL and control characters", 16, lambda: ("\x00\x01" + str(rng.randint(0, 9)), "\\boxed{\x00\x1b[31m7}\f\t\b")),
    ]
    corpus = [(kind, *make()) for kind, count, make in kinds for _ in range(count)]
    rng.shuffle(corpus)
    return corpus


@pytest.mark.timeout(180)
def test_every_adversarial_row_comes_back_labelled_even_when_a_worker_is_killed():
    """>= 1,000 pathological rows, short limits (1 s math-verify timeout, 3 s hard limit), and a verifier
    process SIGKILLed mid-batch: every row gets a status from the vocabulary, nothing is lost."""
    import threading

    from schemas.rollouts import VERIFIER_STATUSES

    corpus = adversarial_corpus()
    assert len(corpus) >= 1000
    references = [r for _, r, _ in corpus]
    responses = [s for _, _, s in corpus]
    config = VerifierConfig(num_workers=2, timeout_s=1, hard_timeout_s=3)
    with VerifierPool(config) as adversarial_pool:
        adversarial_pool.verify(["1"], ["\\boxed{1}"])  # workers up
        victim = adversarial_pool._workers[0].process  # noqa: SLF001 - the test kills the real process
        killer = threading.Timer(2.0, victim.kill)
        killer.start()
        scores, statuses, extracted, _ = adversarial_pool.verify(references, responses)
        killer.join()
        assert victim.poll() is not None and adversarial_pool.restarts >= 1
    assert len(statuses) == len(corpus) and all(s in VERIFIER_STATUSES for s in statuses)
    assert all((score is None) == (status in ("timeout", "error", "bad_reference"))
               for score, status in zip(scores, statuses))
    assert all(e is None or len(e) <= 512 for e in extracted)
    by_kind = {}
    for (kind, _, _), status in zip(corpus, statuses):
        by_kind.setdefault(kind, set()).add(status)
    assert "timeout" in by_kind["huge exponent"] | by_kind["power tower"]  # math-verify's own limit fired


def test_the_pool_works_under_a_default_socket_timeout():
    """A process-wide socket timeout (Beam's GCP credentials code sets 60 s) makes new sockets
    non-blocking; the pool's connections must stay blocking or every read fails with EAGAIN."""
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        with VerifierPool(VerifierConfig(num_workers=1)) as pool:
            scores, statuses, _, _ = pool.verify(["4", "9"], ["so \\boxed{4}", "the answer is \\boxed{8}"])
    finally:
        socket.setdefaulttimeout(previous)
    assert statuses == ["ok", "ok"] and scores == [1.0, 0.0]
