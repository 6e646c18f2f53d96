"""The simple verifiers, for data_sources whose answers are not free-form math: "exact" (string equality of the
final answer), "numeric:TOL" (a number within an absolute tolerance) and "choice" (a multiple-choice letter).

Each factory (VERIFIERS) takes the name's argument and the config, and returns a Verifier; the final answer
is found as for the math verifier (answers.final_answer). Microseconds per response, but numeric and choice
read values with math-verify.
"""

from __future__ import annotations

import math
import re

from schemas.rollouts import VerifierStatus
from transforms.verify.answers import choice_letter, final_answer, normalize
from transforms.verify.math import answer_letter, parse_latex
from transforms.verify.registry import MAX_EXTRACTED_CHARS, Verifier
from transforms.verify.text import clean_text, strip_delimiters


def _exact_form(text: str) -> str:
    return " ".join(strip_delimiters(clean_text(text)).split())


def judge_exact(gold: str, response: str, timeout_s: int):
    """The final answer, delimiters and runs of whitespace aside, must equal the reference string."""
    found, _ = final_answer(clean_text(response))
    if found is None:
        return 0.0, VerifierStatus.NO_ANSWER, None
    answer = _exact_form(found)
    return (1.0 if answer == gold else 0.0), VerifierStatus.OK, answer[:MAX_EXTRACTED_CHARS]


def _number(text: str, timeout_s: int) -> float | None:
    """A real number from an answer or reference (normalized, then math-verify's parse, evaluated)."""
    import sympy

    normalized, _ = normalize(clean_text(text))
    if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", normalized):
        return float(normalized)
    for value in parse_latex(normalized, timeout_s):
        if isinstance(value, sympy.Basic) and value.is_number and value.is_real:
            return float(sympy.N(value, 30))
    return None


def _numeric_gold(reference: str, timeout_s: int):
    value = _number(reference, timeout_s)
    return None if value is None or not math.isfinite(value) else value


def judge_numeric(tolerance: float, gold: float, response: str, timeout_s: int):
    """|answer - reference| <= tolerance (absolute, stated in the config)."""
    found, _ = final_answer(clean_text(response))
    value = _number(found, timeout_s) if found is not None else None
    if value is None:
        return 0.0, VerifierStatus.NO_ANSWER, (found or None) and found[:MAX_EXTRACTED_CHARS]
    return (1.0 if abs(value - gold) <= tolerance else 0.0), VerifierStatus.OK, repr(value)


def judge_choice(gold: str, response: str, timeout_s: int, question: str | None = None):
    """The option letter of the final answer ("(B)", "B", "The answer is (C) 12") must be the reference's;
    an answer giving one listed option's value ("12" where the question lists "(B) 12") names that option."""
    letter = answer_letter(final_answer(clean_text(response))[0], question, timeout_s)
    if letter is None:
        return 0.0, VerifierStatus.NO_ANSWER, None
    return (1.0 if letter == gold else 0.0), VerifierStatus.OK, letter


def exact(argument: None, config) -> Verifier:
    """"exact": the reference in the same form as the answer (a blank one cannot be judged)."""
    return Verifier(lambda reference, timeout_s: _exact_form(reference) or None, judge_exact)


def numeric(argument: str, config) -> Verifier:
    """"numeric:TOL": the reference's value, and TOL, an absolute tolerance >= 0 (ValueError otherwise)."""
    try:
        tolerance = float(argument)
    except ValueError:
        tolerance = -1.0
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"numeric verifier needs an absolute tolerance >= 0, as 'numeric:0.01', "
                         f"got {'numeric:' + argument!r}")
    return Verifier(_numeric_gold,
                    lambda gold, response, timeout_s: judge_numeric(tolerance, gold, response, timeout_s))


def choice(argument: None, config) -> Verifier:
    """"choice": the reference's option letter."""
    return Verifier(lambda reference, timeout_s: choice_letter(clean_text(reference)), judge_choice)
