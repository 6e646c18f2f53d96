"""The "math" verifier: one response against a prepared gold, never below plain math-verify.

Two paths, then the refusals (refusals.py, beside this module):
1. extraction: the project's own final answer (answers.final_answer), normalized (answers.normalize), split
   into parts when it lists several (parts.py), compared by math-verify, with the question in
   view for labels and multiple-choice option values;
2. plain math-verify, run only where the first path did not credit the response: `verify(parse(g),
   parse(x))` with g the gold wrapped in `$...$` unless it has `$` or `\\boxed`, x the project's final
   answer and, unless x was the response's only box (plain reads the last box too), the whole response.
   Any exception is a rejection there, and it runs under its own timeout, so a timeout of the first path
   never hides plain math-verify's credit (plain.py).
Any credit then passes the closed list of refusals; the verdict names what decided it (Verdict.rule):
"extraction", "math_verify" or "refused:<name>". Where both paths credit, extraction wins.

Cost: the first path is about one math-verify parse of a short string per response; the second runs on
rejections only (a short parse, and a whole-response parse where the answer is not a single box).
Runs in a worker's main thread (math-verify's timeouts use signal.alarm).
"""

from __future__ import annotations

import logging
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import product
from typing import NamedTuple

import sympy
from math_verify import parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout

from schemas.rollouts import VerifierStatus
from transforms.verify import answers, parts
from transforms.verify.answers import Gold, choice_letter, final_answer, normalize, prepare_gold_text
from transforms.verify.plain import answer_text, plain_credit, plain_parse, plain_wrap, remember_parse
from transforms.verify.question import asks_for_several, order_by_question, question_options, states_no_value
from transforms.verify.refusals import EXTRACTION, MATH_VERIFY, Acceptance, covers, refusal
from transforms.verify.registry import MAX_EXTRACTED_CHARS, Verdict, Verifier, load, verdict_judge
from transforms.verify.text import bracket_kind, clean_text, last_of_chain


def parse_latex(text: str, timeout_s: int):
    r"""math-verify's parse of an answer given as LaTeX (wrapped in $...$: its plain-expression extractor
    misreads bare LaTeX, "f(x)=2 x" -> 2, "\frac{\sqrt3}{2}" -> nothing), else as plain text."""
    if not text:
        return []
    if _PLAIN_NUMBER.fullmatch(text):
        # "26", "-0.5": math-verify's expression reader gives the value its LaTeX parse of "$26$" gives, at a
        # tenth of the cost (the LaTeX grammar costs about a millisecond per answer)
        parsed = parse(text, parsing_timeout=timeout_s, raise_on_error=True)
        if parsed:
            remember_parse(f"${text}$", parsed)
            return parsed
    delimited = re.search(r"(?<!\\)\$|\\boxed|\\\(|\\\[", text)
    for candidate in ([text] if delimited else [f"${text}$", text]):
        parsed = parse(candidate, parsing_timeout=timeout_s, raise_on_error=True)
        if parsed:
            remember_parse(candidate, parsed)
            return parsed
    return []


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_reference(reference: str, timeout_s: int) -> Gold | None:
    """A gold answer prepared for judging (answers.Gold), or None when neither path can read it. A bare
    reference with no delimiters is the normal case."""
    text, facts = prepare_gold_text(reference)
    cleaned = clean_text(reference)
    parsed = parse_latex(text, timeout_s) or parse_latex(cleaned.strip(), timeout_s)
    plain = tuple(plain_parse(plain_wrap(reference), timeout_s))
    if not parsed and not facts["choice"] and not plain:
        return None
    gold_parts = parts.list_parts(text)
    parsed_parts = tuple(tuple(parse_latex(part, timeout_s)) for part in gold_parts) if len(gold_parts) >= 2 else ()
    if parsed_parts and not all(parsed_parts):
        gold_parts, parsed_parts = [text], ()  # a part math-verify cannot read: the list is compared whole
    elif parsed_parts and all(_equal(parsed_parts[0], other, timeout_s)[0] for other in parsed_parts[1:]):
        # "$\\frac{\\sqrt2\\pi}{4}$ or $\\frac{\\pi}{2\\sqrt2}$": one value spelled twice, not a list
        gold_parts, parsed = [text], [value for spelling in parsed_parts for value in spelling]
        parsed_parts = ()
    percent_of = _percent_as_fraction(text) if facts.get("percent") else None
    return Gold(text=text, parsed=tuple(parsed), decimals=facts["decimals"], choice=facts["choice"],
                angle=facts.get("angle"), variable=facts.get("variable"), unit=facts.get("unit"),
                percent=facts.get("percent", False), plain=plain, parts=tuple(gold_parts), parsed_parts=parsed_parts,
                ordered=parts.is_ordered(cleaned), fraction_text=percent_of and percent_of[0],
                fraction=percent_of and tuple(parse_latex(percent_of[0], timeout_s)),
                fraction_decimals=percent_of and percent_of[1])


def _percent_as_fraction(text: str) -> tuple[str, int | None] | None:
    """A percent gold's value over 100: "62.5" -> ("0.625", 3), "\\frac{100}{3}" -> ("\\frac{\\frac{100}{3}}{100}",
    None). The decimals say at what precision a rounded gold was printed."""
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return (rf"\frac{{{text}}}{{100}}", None) if text else None
    scaled = value.scaleb(-2)
    decimals = -scaled.as_tuple().exponent if scaled.as_tuple().exponent < 0 else 0
    return format(scaled, "f"), decimals


def _rounds_to(gold_text: str, decimals: int | None, predicted, timeout_s: int) -> bool:
    """A gold printed as a rounded decimal ("0.33", "1.414": two or more decimals) against an exact answer
    whose decimal expansion does not end (1/3, pi, sqrt 2): equal when the answer rounds (half up) to
    the gold at the gold's printed precision. Never a tolerance: not for an answer that is itself a
    decimal or a terminating fraction (13/25 is 0.52, not "0.5"), and not for a short gold ("0.5", "3.5"),
    which is as likely exact as rounded. Fixes: "0.33" vs \\frac{1}{3} judged wrong."""
    if decimals is None:
        return False
    significant = len(re.sub(r"[^0-9]", "", gold_text).lstrip("0"))
    if decimals < 2 and significant < 3:
        return False

    @timeout(timeout_seconds=timeout_s)
    def rounds(value) -> bool:
        if value.is_Rational:
            denominator = int(value.q)
            while denominator % 2 == 0:
                denominator //= 2
            while denominator % 5 == 0:
                denominator //= 5
            if denominator == 1:
                return False  # a terminating decimal is compared exactly, by math-verify
        rounded = Decimal(str(sympy.N(value, 40))).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
        return rounded == Decimal(gold_text)

    for value in predicted:
        if not isinstance(value, sympy.Basic) or not value.is_number or value.has(sympy.Float) \
                or value.count_ops() > 40 or not value.is_real:
            continue
        try:
            return rounds(value)
        except (InvalidOperation, TypeError, ValueError, ArithmeticError):
            continue
    return False


def _equal(gold_parsed, predicted, timeout_s: int) -> tuple[bool, bool]:
    r"""(equal, timed out) under math-verify's verify, any gold/prediction pair; intervals and
    inequalities compare both ways (allow_set_relation_comp: fixes "(-\infty, 3)" vs "x < 3")."""
    timed_out = False
    for g, p in product(gold_parsed, predicted):
        try:
            if verify(g, p, timeout_seconds=timeout_s, raise_on_error=True, allow_set_relation_comp=True):
                return True, False
        except TimeoutException:
            timed_out = True
        except Exception:  # noqa: BLE001 - math-verify's own default: an erroring comparison is "not equal"
            continue
    return False, timed_out


def _value_equal(gold: Gold, predicted, timeout_s: int, answer_percent: bool = False) -> tuple[bool, bool]:
    """(equal, timed out) of a parsed answer against the gold's value: exactly, under the rounded-gold
    rule, and for a percent gold "p%" also against p/100 (exactly or rounded at the gold's precision +2),
    unless the answer carries its own percent sign ("0.25\\%" is not 25%)."""
    equal, timed_out = _equal(gold.parsed, predicted, timeout_s)
    if equal or (not timed_out and _rounds_to(gold.text, gold.decimals, predicted, timeout_s)):
        return True, False
    if gold.fraction and not answer_percent:
        equal, late = _equal(gold.fraction, predicted, timeout_s)
        if equal:
            return True, False
        timed_out = timed_out or late
        if gold.fraction_decimals is not None and not late:
            if _rounds_to(gold.fraction_text, gold.fraction_decimals, predicted, timeout_s):
                return True, False
    return False, timed_out


class _Attempt(NamedTuple):
    """The extraction path's result: equal (None when it could not judge), status, the compared answer,
    and math-verify's parse of the whole response when this path needed it (plain math-verify's too)."""

    equal: bool | None
    status: str
    answer: str | None
    whole: list | None = None
    parts_rejected: bool = False  # a list gold, and the answer's values, all readable, do not match it


def _parts_equal(gold: Gold, answer: str, timeout_s: int, question: str | None = None,
                 ordered_hint: bool = False, answer_percent: bool = False) -> tuple[bool, bool]:
    """(equal, every answer part readable) of a list gold against the answer's parts: each gold part matched
    by its own answer part, none left over; a multiset, in order when the gold, the question or the answer
    says the order is the answer's. Labelled answer parts ("y = 2, x = 3") go in the order the question
    names them."""
    answer_parts = order_by_question(parts.list_parts(answer), question)
    by_question = answer_parts is not None
    answer_parts = answer_parts or parts.list_parts(answer)
    gold_texts, gold_parsed = list(gold.parts), list(gold.parsed_parts)
    labelled = [re.match(r"\s*([A-Za-z])\s*=", g) for g in gold_texts]
    # "x=2, y=3" lists a tuple's components by name: unlabelled answers must keep the gold's order, and the
    # pair "(2, 3)" is those components.
    by_name = all(labelled) and len({m.group(1) for m in labelled}) == len(labelled)
    if by_name and len(answer_parts) == 1 and bracket_kind(answer_parts[0]) == "tuple":
        answer_parts = parts.split_parts(answer_parts[0][1:-1])
    by_name = by_name and not any(re.match(r"\s*[A-Za-z]\s*=", a) for a in answer_parts)
    if len(answer_parts) != len(gold_texts):
        signed = parts.parts_with_signs(answer_parts)
        if len(signed) == len(gold_texts):
            answer_parts = signed
    if len(answer_parts) != len(gold_texts):  # "\\pm 2, \\pm 3" against "2, -2, 3, -3": the gold's signs
        signed = parts.parts_with_signs(gold_texts)
        if len(signed) == len(answer_parts):
            gold_texts, gold_parsed = signed, [parse_latex(part, timeout_s) for part in signed]
    if len(answer_parts) != len(gold_texts) or len(answer_parts) > parts.MAX_PARTS:
        return False, True
    parsed_answers = [parse_latex(part, timeout_s) for part in answer_parts]
    # a percent gold's parts are quantities too: "20\\%, 30\\%" lists 0.2 and 0.3
    fractions = [parse_latex(rf"\frac{{{part}}}{{100}}", timeout_s) for part in gold_texts] \
        if gold.percent and not answer_percent else []
    asked_in_order = bool(question) and (parts.is_enumerated(question) or asks_for_several(question))
    ordered = gold.ordered or ordered_hint or parts.is_ordered(answer) or by_name or asked_in_order or by_question

    def equal(g: int, a: int) -> bool:
        same, timed_out = _equal(gold_parsed[g], parsed_answers[a], timeout_s)
        if not same and fractions and not timed_out:
            same, timed_out = _equal(fractions[g], parsed_answers[a], timeout_s)
        if timed_out:
            raise TimeoutException("comparing a part")
        return same

    matched = parts.match_parts(list(range(len(gold_texts))), list(range(len(answer_parts))), ordered,
                                lambda g, a: bool(parsed_answers[a]) and equal(g, a))
    return matched, all(parsed_answers)


def option_letter(answer: str, question: str | None, timeout_s: int) -> str | None:
    """The letter of the one option whose value the answer states, when the question lists options
    ("(A) 10 (B) 12": "12" -> "B"); None when none or several match."""
    if not question or re.search(r"(?<![A-Za-z\\])[A-E](?![A-Za-z])", answer):
        return None  # an answer naming a letter is read as that letter (or as a hedge), never as a value
    options = question_options(question)
    if not options:
        return None
    normalized = normalize(answer)[0]
    if re.fullmatch(r"-?\d*\.\d{3,}", normalized):
        return None  # a decimal approximation picks no option (math-verify compares numbers to 6 digits)
    if answers.qualified_by_words(normalized) or answers.HEDGE_WORDS.search(answer) \
            or states_no_value(normalized, "", question):
        return None  # "approximately 12", "12 or more", "2x = 12": no option's value is stated
    predicted = parse_latex(normalized, timeout_s)
    if not predicted or not covers(answer_text(predicted), normalized):
        return None  # a fragment of the answer ("4(x+8)" of a cut formula) names no option
    matches = [letter for letter, value in options.items()
               if _equal(parse_latex(normalize(value)[0], timeout_s), predicted, timeout_s)[0]]
    return matches[0] if len(matches) == 1 else None


def answer_letter(found: str | None, question: str | None, timeout_s: int) -> str | None:
    """The option a final answer names: its letter ("(B)", "Option B"), else the one listed option whose
    value it states (option_letter); None for neither."""
    if found is None:
        return None
    return choice_letter(found) or option_letter(found, question, timeout_s)


def _extraction(gold: Gold, text: str, found: str | None, timeout_s: int, question: str | None) -> _Attempt:
    """The project's own path: its final answer, normalized, compared (see the module docstring)."""
    if gold.choice:
        letter = answer_letter(found, question, timeout_s)
        if letter is None:
            return _Attempt(False, VerifierStatus.NO_ANSWER, None)
        return _Attempt(letter == gold.choice, VerifierStatus.OK, letter)
    whole = None
    paired = False
    gold_parsed = gold.parsed
    try:
        if found is None:
            # No marked answer: math-verify's own extraction over the whole text (its last expression),
            # read again as a chain's last member when it is one ("... = 20 \times 2 = 40").
            whole = parse(text, parsing_timeout=timeout_s, raise_on_error=True)
            predicted = whole
            extracted = answer_text(whole) if whole else None
            if extracted and (last_of_chain(extracted) != extracted or len(gold.parts) >= 2):
                found = extracted  # a chain's last member; or a list, matched part by part below
        if found is not None:
            answer, facts = normalize(found, gold)
            extracted = answer[:MAX_EXTRACTED_CHARS]
            if len(gold.parts) >= 2:
                matched, readable = _parts_equal(gold, answer, timeout_s, question, parts.is_ordered(found),
                                                 facts.get("percent", False))
                return _Attempt(matched, VerifierStatus.OK, extracted, parts_rejected=not matched and readable)
            if len(gold.parts) == 1 and bracket_kind(gold.text) == "tuple":
                # "y=2, x=3" against the pair (2, 3) asked as "find $x$ and $y$": the pair in the question's order
                labelled = order_by_question(parts.list_parts(answer), question)
                if labelled:
                    answer, paired = "(" + ", ".join(part.split("=")[1].strip() for part in labelled) + ")", True
            if gold.angle == "degrees" and (re.search(r"\\pi\b", answer) or answers.RADIANS.search(found)):
                # A gold in degrees against an answer in radians: compare in radians.
                answer = answers.RADIANS.sub("", answer).strip()
                gold_parsed = parse_latex(answers.degrees_to_radians(gold.text), timeout_s)
            predicted = parse_latex(answer, timeout_s)
    except TimeoutException:
        return _Attempt(None, VerifierStatus.TIMEOUT, None, whole)
    except Exception as exc:  # math-verify raises arbitrary sympy/antlr errors on odd input
        return _Attempt(None, VerifierStatus.ERROR, f"parse error: {type(exc).__name__}"[:MAX_EXTRACTED_CHARS], whole)
    if not predicted:
        return _Attempt(False, VerifierStatus.NO_ANSWER, extracted, whole)
    if gold_parsed is gold.parsed:
        equal, timed_out = _value_equal(gold, predicted, timeout_s, facts.get("percent", False) if found else False)
    else:
        equal, timed_out = _equal(gold_parsed, predicted, timeout_s)
    if equal:
        return _Attempt(True, VerifierStatus.OK, extracted, whole)
    if timed_out:
        return _Attempt(None, VerifierStatus.TIMEOUT, extracted, whole)
    return _Attempt(False, VerifierStatus.OK, extracted, whole, parts_rejected=paired)


def judge_response(gold: Gold, response: str, timeout_s: int, question: str | None = None) -> Verdict:
    """The verdict of one response against a prepared gold (see the module docstring); `question` is the
    prompt's text (a chat's last user message), used for labels and option values only. A timeout is
    status "timeout" with a null score, never a silent 0."""
    text = clean_text(response)
    found, how = final_answer(text)
    ours = _extraction(gold, text, found, timeout_s, question)

    def compare(answer: str, answer_percent: bool = False) -> bool:
        try:
            return _value_equal(gold, parse_latex(answer, timeout_s), timeout_s, answer_percent)[0]
        except Exception:  # noqa: BLE001 - an answer math-verify cannot read equals nothing
            return False

    def same_value(first: str, second: str) -> bool | None:
        """Equal, unequal, or None where math-verify cannot read one of them whole."""
        texts = [normalize(t)[0] for t in (first, second)]
        try:
            parsed = [parse_latex(t, timeout_s) for t in texts]
        except Exception:  # noqa: BLE001 - unreadable: no opinion
            return None
        if not all(parsed) or not all(covers(answer_text(p), t) for p, t in zip(parsed, texts)):
            return None
        return _equal(parsed[0], parsed[1], timeout_s)[0]

    def accept(path: str, answer: str, value: str | None = None) -> Verdict:
        refused = refusal(Acceptance(path, answer, found, text, question, gold, compare, value, same_value,
                                     ours.parts_rejected))
        if refused:
            return Verdict(0.0, VerifierStatus.OK, (ours.answer or answer)[:MAX_EXTRACTED_CHARS], f"refused:{refused}")
        return Verdict(1.0, VerifierStatus.OK, answer[:MAX_EXTRACTED_CHARS], path)

    if ours.equal:
        return accept(EXTRACTION, ours.answer)
    credited = plain_credit(gold, response, text, found, how, ours.whole, timeout_s)
    if credited is not None:
        return accept(MATH_VERIFY, *credited)
    if ours.equal is None:
        return Verdict(None, ours.status, ours.answer, None)
    return Verdict(0.0, ours.status, ours.answer, EXTRACTION)


def _quiet_math_verify_logs():
    # On timeout math-verify logs the whole input string at WARNING; statuses carry that information.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


def verifier(argument: str | None, config) -> Verifier:
    """The "math" verifier (VERIFIERS["math"]): references prepared by parse_reference, responses judged by the
    function VerifierConfig.judge names (judge_response by default, by its stable alias), whose rule is its
    import path where it returns (score, status, answer). Built once per process, before any row: it quiets
    math-verify's logs and judges one response, so that loading math-verify's grammar is not timed."""
    _quiet_math_verify_logs()
    judge = verdict_judge(load(config.judge), config.judge)
    try:
        judge(parse_reference("1", config.timeout_s), "The answer is $\\boxed{1}$.", config.timeout_s, None)
    except (Exception, TimeoutException):  # noqa: BLE001 - a judge failing here fails on rows, reported there
        pass
    return Verifier(parse_reference, judge)
