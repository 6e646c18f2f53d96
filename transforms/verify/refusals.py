"""Refusals: the closed list of rules that turn an accepted answer into a rejection, each for a known
false positive.

The verifier accepts whatever plain math-verify accepts and whatever its own extraction accepts; a verdict
of 1 then passes every rule below, in order, and the first that fires rejects it with
verifier_rule = "refused:<name>". A rule only fires on an acceptance, so "refused:" always means "would
have been credited without this rule". Each rule's docstring names the false positive it prevents; the
table in tests/verifier_cases.py has accepted and refused cases for every one. Adding a rule means adding
it here (REFUSALS) with its cases: nothing else refuses.

Pure functions of strings (and one math-verify comparison for percent_rescaled); microseconds per check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from transforms.verify import answers, parts
from transforms.verify.answers import Gold
from transforms.verify.question import (asked_part, asked_variables, blank_expression, math_spans, math_variables,
                                        question_options, states_no_value)
from transforms.verify.text import ARITHMETIC, bracket_kind, math_key, order_conflict, strip_delimiters

EXTRACTION = "extraction"  # the project's own extraction and normalization decided
MATH_VERIFY = "math_verify"  # plain math-verify decided


@dataclass(frozen=True)
class Acceptance:
    """What was credited: by which path, the answer text it compared (plain math-verify's extracted string
    on that path), the response's final answer as the project found it (None when it found none), the
    cleaned response, and the question."""

    path: str
    answer: str
    found: str | None
    response: str
    question: str | None
    gold: Gold
    compare: Callable[[str, bool], bool]  # does this answer text (normalized; True: it had a % sign) equal the gold?
    value: str | None  # plain math-verify's parsed value, printed (None on the extraction path)
    same_value: Callable[[str, str], bool | None]  # do two answer texts state one value (None: unreadable)?
    parts_rejected: bool = False  # the project matched the answer's values against a list gold: no match

    @cached_property
    def normalized(self) -> str:
        """The credited answer normalized: the project's own on its path; on plain's, the final answer where
        plain's credit covers it, else plain's string."""
        if self.path == EXTRACTION:
            return self.answer
        text = self.found if self.found is not None and covers(self.answer, self.found) else self.answer
        return answers.normalize(text, self.gold)[0]


# Numbers (thousands separators removed) and single-letter identifiers outside \text{}: what an answer
# states. Words of two or more letters are prose or units, LaTeX commands are notation.
_TEXT_BLOCK = re.compile(r"\\(?:text|mbox|mathrm|textbf|operatorname)\s*\{[^{}]*\}")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])")
_SEPARATOR = re.compile(r"(?<=\d)(?:,\\!|\{,\}|,(?=\d{3}(?!\d))|\\,|\\!)(?=\d)")


def stated_tokens(text: str) -> set[str]:
    text = _SEPARATOR.sub("", _TEXT_BLOCK.sub(" ", text))
    return {t.lstrip("0") or "0" if t[0].isdigit() and "." not in t else t.lower() for t in _TOKEN.findall(text)}


def covers(credited: str, final: str) -> bool:
    """Does the credited expression state everything the final answer states? Not when it is a fragment
    ("8" of "8\\sqrt{2}", "1" of a matrix, "7" of "7 or 8") or another expression entirely."""
    return stated_tokens(final) <= stated_tokens(credited)


def other_expression(a: Acceptance) -> bool:
    """Plain math-verify credited an expression other than the response's final answer: a fragment of it
    ("8\\sqrt{2}" read as 8, "5*sqrt(2) - 3" as 3, a matrix as its first entry, "7 or 8" as 7) or an earlier
    value ("the answer is 16 ... #### 9"), or a fragment of what it extracted itself (a matrix "[1, -2; 0, 1]"
    parsed as 1). Where the response has a box and the project's final answer came from a later phrase, a
    credit that covers the last box stands (a box is the stronger marker)."""
    if a.path != MATH_VERIFY:
        return False
    if a.value is not None and not covers(a.value, a.answer):
        return True
    if a.found is None or covers(a.answer, a.found):
        return False
    boxes = answers.boxed_spans(a.response)
    return not (boxes and covers(a.answer, boxes[-1][2]))


def hedged_answer(a: Acceptance) -> bool:
    """A one-line response, without a box, credited by math-verify's reading (plain, or the project's own
    fallback where it found no final answer), which denies, hedges or bounds its value ("5 is not possible",
    "Wrong: 5", "It is not $5$.", "Perhaps $5$.", "We need at least $5$."): math-verify reads the number."""
    line = a.response.strip()
    if (a.path != MATH_VERIFY and a.found is not None) or "\\boxed" in line or "\n" in line \
            or len(line) > answers.BARE_MAX_CHARS:
        return False
    prose = _TEXT_BLOCK.sub(lambda m: " " + m.group(0).split("{", 1)[1].rstrip("}") + " ", line)
    prose = parts.MATH_SPAN.sub(" ", prose)
    return answers.denies_or_hedges(prose)


def unit_mismatch(a: Acceptance) -> bool:
    """A unit other than the gold's ("5 m" for "5 cm", "7 g" for "7 kg", "5 cm^2" for "5 cm"), or an angle in
    radians credited as degrees ("30 radians" for 30°): both drop the unit and compare the numbers."""
    _, facts = answers.normalize(a.found or a.answer, a.gold)
    if facts["unit"] and a.gold.unit and facts["unit"] != a.gold.unit:
        return True
    text = a.found or a.answer
    return a.path == MATH_VERIFY and a.gold.angle == "degrees" and bool(answers.RADIANS.search(text)) \
        and not re.search(r"\\pi\b", text)


def set_vs_tuple(a: Acceptance) -> bool:
    """A set against one tuple, either way ("(1,2)" vs "\\{1,2\\}"): math-verify reads "(1,2)" as an interval
    or tuple and calls it equal to the set. A list of solutions against the set of the same solutions
    ("(3,2),(-3,2)" vs "\\{(3,2),(-3,2)\\}") is not this case."""
    return order_conflict(a.gold.text, a.normalized)


def unsolved_equation(a: Acceptance) -> bool:
    """An equation whose left side is an expression the question does not ask for ("2x = 10" for 10,
    "x^2 = 4" for 4), or an equation of numbers that does not hold ("3 + 4 = 8"): math-verify compares the
    right side. A label stays a label: a single name ("x", "m_{\\max}", "f(x)"), a left side the question
    names ("a + b = 12" when it asks for $a+b$), or a computation that holds ("5 \\times 4 = 20")."""
    answer = a.normalized
    if states_no_value(answer, a.gold.text, a.question):
        return not _asked_as_written_otherwise(a, answer.split("=")[0].strip())
    # "3 + 4 = 8": an equation of numbers that does not hold states no value
    left, _, right = answer.partition("=")
    return answer.count("=") == 1 and bool(ARITHMETIC.fullmatch(left.strip())) and \
        a.same_value(left.strip(), right.strip()) is False


def _asked_as_written_otherwise(a: Acceptance, left: str) -> bool:
    """Is this left side an expression the question asks for, written in another order ("b + a" for "find
    $a+b$", "x_2 + x_1" for the blank of "$x_1 + x_2 = \\_\\_$")? Only expressions with a variable: an equal
    number is no name for a quantity."""
    if not re.search(r"[A-Za-z]", left):
        return False
    named = math_spans(asked_part(a.question)) + [blank_expression(a.question) or ""]
    return any(a.same_value(left, span) for span in named if re.search(r"[A-Za-z]", span) and "=" not in span)


def qualified_by_words(a: Acceptance) -> bool:
    """Words that change or hedge the value ("3 \\text{ or more}", "5 squared", "2 thirds"): math-verify
    drops them and reads 3, 5 and 2."""
    return answers.qualified_by_words(a.normalized)


def percent_rescaled(a: Acceptance) -> bool:
    """A percent answer credited for a value it equals only once rescaled: "50\\%" for a gold of 0.5 (the sign
    on an answer is a unit, dropped, never a division by 100), or "1\\%" read as 1 for a gold of 100\\%."""
    text = a.found or a.answer
    if a.gold.choice or not answers.PERCENT.search(text):
        return False
    return not a.compare(answers.normalize(text, a.gold)[0], True)


def list_mismatch(a: Acceptance) -> bool:
    """A gold listing several values credited for an answer giving another number of them (one of two
    roots, an extra value), or a single gold credited for a list ("5 or 7" for 5): math-verify may match
    one member; or a list the project matched value by value (in order where the order is the answer's)
    and found wrong: math-verify compares lists as sets, or reads "(a) 3 (b) 4" as a product."""
    if a.path != MATH_VERIFY:
        return False  # the project's own path matches lists value by value (parts.py)
    if a.parts_rejected:
        return True
    gold_parts = parts.parts_with_signs(list(a.gold.parts) or parts.list_parts(a.gold.text))
    answer_parts = parts.parts_with_signs(parts.list_parts(a.normalized))
    if len(gold_parts) >= 2:
        return len(answer_parts) != len(gold_parts)
    bracketed = re.fullmatch(r"\s*[(\[].*[)\]]\s*", a.gold.text) is not None  # a tuple, interval or "[a, b]" list
    single = not bracketed and bracket_kind(a.gold.text) is None and "=" not in a.gold.text
    return single and len(answer_parts) >= 2


# Quantities a word label can name that a question names by the same word when it asks for them ("Perimeter:
# 12" for an area); labels outside this list ("Maximum", "Total", "Answer") may be synonyms: never refused.
_QUANTITY_LABELS = frozenset("""perimeter area volume radius diameter circumference length width height depth
side hypotenuse angle mean median mode range variance probability speed distance time cost price profit
age weight mass""".split())


def label_not_asked(a: Acceptance) -> bool:
    """A label on a quantity the question does not ask for: "m = 3" for "If $m+n=9$ and $m-n=3$, find $n$."
    (the asking part names other variables, not m), "x_1 = 5" for "then $x_1+x_2=\\_\\_$" (not the blank's
    left side), "\\text{Perimeter} = 12" or "Perimeter: 12" where the question never says perimeter.
    math-verify, and the label rule, read the value and drop the name."""
    if not a.question:
        return False
    text = strip_delimiters(a.found if a.found is not None else a.answer)
    blank = blank_expression(a.question)
    if blank and text.count("=") == 1 and "," not in text:
        # "Then $x_1+x_2=\\_\\_$": a label must be the blank's own left side ("x_1 = 5" is not x_1+x_2;
        # "x_2 + x_1 = 5" is, written the other way round)
        left = text.split("=")[0].strip()
        return math_key(left) != math_key(blank) and not a.same_value(left, blank)
    variable = re.match(r"^([A-Za-z])(?:_\{?\w+\}?)?\s*=(?!=)", text)
    if variable and text.count("=") == 1:
        # another quantity of the question's own ("m" where it asks for n); a name it never uses ("N = 5" for
        # "find the number of pairs $(a, b)$") names the asked quantity afresh
        asked = asked_variables(a.question)
        return bool(asked) and variable.group(1) not in asked \
            and variable.group(1) in math_variables(a.question)
    word = re.match(r"^(?:\\text\{\s*)?([A-Za-z]{3,})\s*\}?\s*[:=]", text)
    if word and word.group(1).lower() in _QUANTITY_LABELS:
        return word.group(1).lower() not in a.question.lower()
    return False


def option_mismatch(a: Acceptance) -> bool:
    """An option letter credited for an answer whose stated value is another option's ("A) \\pi/3" where the
    question lists "A) \\pi/6 ... C) \\pi/3"): the letter and the value disagree. Claimed only on that
    evidence: a value equal to no option (often a response cut mid-formula) refuses nothing."""
    if not a.gold.choice or a.found is None:
        return False
    stated = answers.letter_and_value(a.found)
    options = question_options(a.question)
    if stated is None or stated[0] not in options or a.same_value(stated[1], options[stated[0]]):
        return False
    return any(a.same_value(stated[1], value) for letter, value in options.items() if letter != stated[0])


REFUSALS: dict[str, Callable[[Acceptance], bool]] = {
    rule.__name__: rule for rule in (
        other_expression, hedged_answer, unit_mismatch, set_vs_tuple, unsolved_equation, label_not_asked,
        qualified_by_words, percent_rescaled, list_mismatch, option_mismatch,
    )
}


def refusal(acceptance: Acceptance) -> str | None:
    """The name of the first rule that refuses this acceptance, or None."""
    for name, rule in REFUSALS.items():
        if rule(acceptance):
            return name
    return None
