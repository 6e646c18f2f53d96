"""Finding a response's final answer and writing answers in the form math-verify compares.

math-verify parses and compares well once it is handed the answer as LaTeX; what it lacks is mostly
around that: it reads a bare answer with no `$` poorly ("\\frac{\\sqrt3}{2}" finds nothing, "2\\sqrt2"
finds 2), unicode, number words, JSON-mangled backslashes, "50\\%" vs 0.5 (it rescales percentages), and
a gold written as a rounded decimal. Each addition below says which failure it fixes; equality itself
stays math-verify's (no tolerances are added: a false positive is worse than a miss).

Everything here is a pure function of strings; about 20-50 µs per response before math-verify runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BARE_MAX_CHARS = 200
BARE_MAX_WORDS = 3

# JSON-decoding LaTeX written with single backslashes turns "\f", "\b", "\v", "\a" into control
# characters ("\frac" -> form feed + "rac") and "\t", "\r" too; the latter two only where a LaTeX command
# follows, so real tabs and line ends stay. Fixes: "\x0crac{1}{2}" parsed as nothing.
_CONTROL = [
    (re.compile("\x0c"), r"\\f"), (re.compile("\x08"), r"\\b"), (re.compile("\x0b"), r"\\v"),
    (re.compile("\x07"), r"\\a"),
    (re.compile("\t(?=(?:imes|ext|frac|heta|an\\b|au\\b|riangle|ilde|op|o\\b|circ))"), r"\\t"),
    (re.compile("\r(?=(?:ight|angle|ho\\b|floor|ceil|m\\b|Rightarrow|ightarrow))"), r"\\r"),
]

# Unicode spellings math-verify does not read ("∞", "π", "≤", "√2", "x²"): fixes misses on answers
# typed with unicode math.
_UNICODE = {
    "∞": r"\infty ", "π": r"\pi ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "∪": r"\cup ", "∩": r"\cap ",
    "−": "-", "×": r"\times ", "·": r"\cdot ", "⋅": r"\cdot ", "÷": r"\div ", "∅": r"\emptyset ",
    "°": r"^\circ ", "±": r"\pm ", "∈": r"\in ", "ℝ": r"\mathbb{R}", "½": r"\frac{1}{2}", "⅓": r"\frac{1}{3}",
    "⅔": r"\frac{2}{3}", "¼": r"\frac{1}{4}", "¾": r"\frac{3}{4}", "θ": r"\theta ", "α": r"\alpha ",
}
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_ROOT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]*\)|\{[^{}]*\})")
# Spellings of the same command (math-verify knows \frac but not every variant in every position).
_SPELLINGS = [
    (re.compile(r"\\[dt]frac"), r"\\frac"), (re.compile(r"\\leqslant|\\leq\b"), r"\\le"),
    (re.compile(r"\\geqslant|\\geq\b"), r"\\ge"), (re.compile(r"\\varnothing|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\left\b|\\right\b|\\bigl\b|\\bigr\b|\\Bigl\b|\\Bigr\b"), ""), (re.compile(r"\\displaystyle"), ""),
    (re.compile(r"\\!"), ""), (re.compile(r"bmatrix|vmatrix|Bmatrix"), "pmatrix"),
    (re.compile(r"\\langle"), "("), (re.compile(r"\\rangle"), ")"),
]

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}


def words_to_number(text: str) -> int | None:
    """'twenty-one' -> 21, 'one hundred' -> 100, 'three thousand two hundred' -> 3200; None otherwise.
    Fixes: a number written in words is not a number to math-verify."""
    tokens = re.split(r"[\s-]+", text.strip().lower().replace(" and ", " "))
    if not tokens or not all(t in _NUMBER_WORDS or t in _TENS or t in ("hundred", "thousand", "million")
                             for t in tokens):
        return None
    total, current = 0, 0
    for t in tokens:
        if t in _NUMBER_WORDS:
            current += _NUMBER_WORDS[t]
        elif t in _TENS:
            current += _TENS[t]
        elif t == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * (1000 if t == "thousand" else 1_000_000)
            current = 0
    return total + current


# A backslash straight before a digit is no LaTeX command: "\\boxed{\\15}" is "\\$15" whose "$" was lost
# (fixes "\\15" read as nothing); "\\\\" row breaks ("1 \\\\2") are left alone.
_STRAY_BACKSLASH = re.compile(r"(?<!\\)\\(?=\d)")


def clean_text(text: str) -> str:
    """Control characters back to the LaTeX commands they came from, unicode math to LaTeX, stray
    backslashes before digits dropped."""
    for pattern, replacement in _CONTROL:
        text = pattern.sub(replacement, text)
    text = _STRAY_BACKSLASH.sub("", text)
    if any(ord(c) > 127 for c in text):
        text = _ROOT.sub(lambda m: r"\sqrt{" + m.group(1).strip("(){}") + "}", text)
        text = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", text)
        for symbol, latex in _UNICODE.items():
            text = text.replace(symbol, latex)
    return text


# ------------------------------------------------------------------------------------------------
# The final answer of a response.
# ------------------------------------------------------------------------------------------------

def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{...} / \\fbox{...}, braces balanced (nested allowed)."""
    spans = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((match.start(), i, text[match.end():i - 1]))
    return spans


_BOX_SEPARATOR = re.compile(r"[\s$,;]*(?:\\quad|\\qquad|and|or|\\text\{\s*(?:and|or)\s*\})?[\s$,;]*"
                            r"(?:[a-z](?:_\d)?\s*=\s*)?")
_FINAL_ANSWER = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|=|:)\s*:?\s*(.+?)(?=\.\s|\.?\s*$|\n|;\s|\s+I hope)",
                           re.IGNORECASE)
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?(?:final answer|answer|a)\s*[:：]\s*(?:\*\*)?\s*(.+?)\s*$",
                          re.IGNORECASE | re.MULTILINE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def is_bare_answer(text: str) -> bool:
    """The rule for a response that IS the answer ("final answer only" datasets): one line, at most
    200 characters, and no sentence: at most 3 words of two or more letters once LaTeX commands are
    removed ("x = 3", "\\frac{1}{2}", "twenty-one", "x=1 \\text{ or } x=2", "Minimum: 1"). A chain of
    thought is never judged whole."""
    stripped = text.strip()
    if not stripped or "\n" in stripped or len(stripped) > BARE_MAX_CHARS:
        return False
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", stripped))
    return len(words) <= BARE_MAX_WORDS


def final_answer(text: str) -> tuple[str | None, str]:
    """(the final answer's text, how it was found) of a cleaned response; (None, "none") when there is
    no marked answer and the response is not a bare answer.

    In order: the last \\boxed{} (with the other boxes of its line, joined: "\\boxed{1}, \\boxed{2}"
    answers both roots); "final answer is ..." / "the answer is ..."; "#### ..."; a line "Answer: ..." /
    "A: ..."; the last bold span of the last line; the whole response when it is a bare answer.
    """
    boxes = boxed_spans(text)
    if boxes:
        last_start = boxes[-1][0]
        line_start = text.rfind("\n", 0, last_start) + 1
        line_end = text.find("\n", last_start)
        line_end = len(text) if line_end < 0 else line_end
        # Boxes side by side ("\\boxed{1}, \\boxed{2}" or "... and \\boxed{2}") are one answer with parts;
        # a box followed by more prose before the last one was a draft.
        together = [boxes[-1]]
        for box in reversed(boxes[:-1]):
            between = text[box[1]:together[0][0]]
            if box[0] < line_start or not _BOX_SEPARATOR.fullmatch(between):
                break
            together.insert(0, box)
        return ", ".join(content for _, _, content in together), "boxed"
    finals = _FINAL_ANSWER.findall(text)
    if finals:
        answer = finals[-1]
        while True:  # "Final Answer: The final answer is 5." -> "5"
            inner = _FINAL_ANSWER.findall(answer)
            if not inner or inner[-1] == answer:
                return answer, "final answer"
            answer = inner[-1]
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1], "####"
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1], "answer line"
    last_line = text.strip().rsplit("\n", 1)[-1]
    bold = _BOLD.findall(last_line)
    if bold:
        return bold[-1], "bold"
    if is_bare_answer(text):
        return text.strip(), "bare"
    return None, "none"


# ------------------------------------------------------------------------------------------------
# Normalizing an answer (and a gold) before math-verify parses it.
# ------------------------------------------------------------------------------------------------

_DELIMITERS = re.compile(r"^\s*(?:\$\$?|\\\(|\\\[|\*\*)\s*|\s*(?:\$\$?|\\\)|\\\]|\*\*)\s*$")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercent\b)")
_DOLLAR = re.compile(r"\\\$|\bdollars?\b|\\text\{\s*dollars?\s*\}")
_GROUPED_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\,|\\ |\\;|\\thinspace\s*)(?=\d{3}(?!\d))")
_PLAIN_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WORD_LABEL = re.compile(r"^\s*(?:\\text\{\s*)?([A-Za-z][A-Za-z ]{0,30}?)\s*:\s*\}?\s*(?=\S)")
_FUNCTION_LABEL = re.compile(r"^\s*[A-Za-z](?:\^\{?-1\}?)?\s*\(\s*([a-z])\s*\)\s*=\s*")
_OR = re.compile(r"\s*(?:\\text\{\s*(?:or|and)\s*\}|\\quad\b|\\qquad\b|\bor\b|\band\b)\s*")
DEGREES = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:\^\s*\{?\\circ\}?|\\circ|\s*\\text\{\s*degrees?\s*\}|\s+degrees?\b)")
RADIANS = re.compile(r"\s*(?:\\text\{\s*radians?\s*\}|\bradians?\b|\brad\b)")
_CHOICE = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?\s*([A-E])\s*\)?\s*\}?(?:\s|\.|$)")
_DECIMAL = re.compile(r"-?\d*\.\d+")
KNOWN_UNITS = frozenset(_UNIT_WORDS := ("cm", "m", "mm", "km", "kg", "g", "mg", "s", "sec", "seconds", "minutes", "min", "hours", "h",
               "inches", "in", "feet", "ft", "meters", "miles", "mph", "units", "square units", "cm^2", "m^2"))
_TRAILING_UNIT = re.compile(r"^(.*?\d)\s*(?:\\(?:text|mbox|mathrm)\{\s*([A-Za-z^0-9 ]+?)\s*\}|\s([A-Za-z]+(?:\^\d)?(?: [A-Za-z]+){0,2}))\s*$")
# "60 miles per hour", "12 square feet": a number followed by up to three plain words is a number with a
# unit (fixes misses on answers that name their unit); only known units are compared with the gold's.
_UNIT_PHRASE = re.compile(r"[a-z]{2,}(?: [a-z]{2,}){0,2}")


_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_SET_BUILDER = re.compile(r"\\\{\s*[a-z]\s*(?:\\mid|\||:|\\vert)\s*(.+?)\s*\\\}")
_VECTOR = re.compile(r"\\begin\{pmatrix\}(.*?)\\end\{pmatrix\}", re.DOTALL)


def _repeating_to_fraction(match: re.Match) -> str:
    """"0.\\overline{3}" -> "\\frac{1}{3}": a repeating decimal is exact (fixes it against 1/3)."""
    from fractions import Fraction

    sign, whole, fixed, repeat = match.groups()
    value = Fraction(int(whole or 0)) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
    value += Fraction(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(fixed))
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _vector_to_tuple(match: re.Match) -> str:
    """A one-row or one-column pmatrix as the tuple it is ("\\begin{pmatrix}1\\\\2\\end{pmatrix}" -> "(1, 2)"):
    fixes a vector gold against "(1,2)" or "\\langle 1,2 \\rangle"; a real matrix stays a matrix."""
    rows = [r.strip() for r in re.split(r"\\\\", match.group(1)) if r.strip()]
    cells = [[c.strip() for c in row.split("&")] for row in rows]
    if len(cells) > 1 and all(len(row) == 1 for row in cells):
        return "(" + ", ".join(row[0] for row in cells) + ")"
    if len(cells) == 1 and len(cells[0]) > 1:
        return "(" + ", ".join(cells[0]) + ")"
    return match.group(0)


@dataclass(frozen=True)
class Gold:
    """A reference prepared once: its normalized text, math-verify's parse of it, and what the rules
    below need to know about it."""

    text: str
    parsed: tuple
    decimals: int | None  # a gold written as a decimal: its printed precision
    choice: str | None  # a multiple-choice letter
    angle: str | None  # "radians" when it carries pi, "degrees" when it carries a degree sign
    variable: str | None  # the variable of a function label "f(x) = ..."
    unit: str | None


def strip_delimiters(text: str) -> str:
    text = text.strip()
    previous = None
    while previous != text:
        previous = text
        text = _DELIMITERS.sub("", text).strip().rstrip(".").strip()
    return text


def last_of_chain(text: str) -> str:
    """The last member of a chain of equalities, "\\text{Total} = 129 + 195 = 324" -> "324": a worked
    line ending in its value (fixes misses where the value ends a computation). One "=" is left alone
    ("2x = 10" is not 10), and so are several answers ("x=2, y=3", "x = 1 \\text{ or } x = 2")."""
    if re.search(r",|\\text\{\s*(?:or|and)\s*\}|\bor\b|\band\b|\\quad", text):
        return text
    depth, cuts = 0, []
    for i, c in enumerate(text):
        depth += {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}.get(c, 0)
        if c == "=" and depth == 0 and text[i - 1:i] not in ("<", ">", "!", "\\"):
            cuts.append(i)
    return text[cuts[-1] + 1:].strip() if len(cuts) >= 2 else text


def states_no_value(answer: str, gold_text: str) -> bool:
    """An equation whose left side is an expression ("2x = 10", "x^2 = 4") against a gold that is a
    value: math-verify compares the right side and calls "2x = 10" equal to 10. A left side that is a
    name ("x", "w_1", "f(x)", "\\text{Area}") is a label and stays math-verify's to read. Fixes that
    false positive."""
    if "=" in gold_text or answer.count("=") != 1 or re.search(r"[<>]|\\[lg]e", answer):
        return False
    left = answer.split("=")[0].strip()
    if re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([a-z]\))?|\\text\{[^{}]*\}|[A-Za-z ]+", left):
        return False
    return bool(re.search(r"[\d+\-*/^]|\\frac|\\cdot|\\sqrt", left))


def unit_of(text: str) -> tuple[str, str | None]:
    """(text without a trailing unit, the unit) for "5 \\text{ cm}", "5 cm"; unknown words stay."""
    match = _TRAILING_UNIT.match(text)
    if not match:
        return text, None
    unit = (match.group(2) or match.group(3) or "").strip().lower()
    if unit not in KNOWN_UNITS and not _UNIT_PHRASE.fullmatch(unit):
        return text, None
    return match.group(1), unit


def normalize(text: str, gold: Gold | None = None) -> tuple[str, dict]:
    """An answer (or, with gold None, a reference) as LaTeX for math-verify, and facts about it
    (percent, unit, label variable). Gold-dependent rules (angles, labels) need the prepared gold."""
    facts: dict = {}
    text = strip_delimiters(text)
    for pattern, replacement in _SPELLINGS:
        text = pattern.sub(replacement, text)
    # "50\%" vs 0.5: math-verify rescales percentages; the sign is dropped on both sides instead, so
    # 50% = 50 and never 0.5.
    text, percents = _PERCENT.subn("", text)
    facts["percent"] = bool(percents)
    text = _DOLLAR.sub("", text).strip()
    # "10{,}000", "10\,000", "10,000": thousands separators, never a list ("1,2" stays a list).
    text = _GROUPED_THOUSANDS.sub("", text)
    if _PLAIN_THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    text = _REPEATING.sub(_repeating_to_fraction, text)
    # "\\{x \\mid x > 1\\}" -> "x > 1": set-builder as the condition, which math-verify compares with
    # intervals (fixes set-builder vs interval misses).
    builder = _SET_BUILDER.fullmatch(text)
    if builder:
        text = builder.group(1)
    text = _VECTOR.sub(_vector_to_tuple, text)
    number = words_to_number(text)
    if number is not None:
        text = str(number)
    label = _FUNCTION_LABEL.match(text)
    if label:  # "f(x) = 2x" -> "2x", remembering x (the same function may use another variable name)
        facts["variable"] = label.group(1)
        text = text[label.end():]
    word_label = _WORD_LABEL.match(text)
    if word_label and (gold is None or ":" not in gold.text) and not _CHOICE.match(text):
        text = text[word_label.end():]  # "Minimum: 1" -> "1"
    text = last_of_chain(text)
    text, facts["unit"] = unit_of(text)
    text = _OR.sub(", ", text).strip(" ,")
    if gold is not None:
        if gold.angle == "radians" and DEGREES.search(text):
            text = DEGREES.sub(lambda m: rf"\frac{{{m.group(1)}\pi}}{{180}}", text)
        if gold.variable and facts.get("variable") and facts["variable"] != gold.variable \
                and not re.search(rf"(?<![A-Za-z\\]){gold.variable}(?![A-Za-z])", text):
            text = re.sub(rf"(?<![A-Za-z\\]){facts['variable']}(?![A-Za-z])", gold.variable, text)
    return text.strip(), facts


def prepare_gold_text(reference: str) -> tuple[str, dict]:
    """The reference normalized like an answer, and what the rules need to know about it."""
    text, facts = normalize(clean_text(reference))
    if re.search(r"\\pi\b", text) and not DEGREES.search(text):
        facts["angle"] = "radians"
    elif DEGREES.search(text):
        facts["angle"] = "degrees"
    decimal = _DECIMAL.fullmatch(text)
    facts["decimals"] = len(text.split(".")[1]) if decimal else None
    choice = _CHOICE.match(text)
    facts["choice"] = choice.group(1) if choice and len(re.sub(r"\\text(?:bf)?|[{}()\s.]", "", text)) == 1 else None
    return text, facts


def bracket_kind(text: str) -> str | None:
    """"set" for "\\{...\\}", "tuple" for "(a, b, ...)" with a comma at the top level, else None."""
    text = text.strip()
    if text.startswith("\\{") and text.endswith("\\}"):
        return "set"
    if text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, c in enumerate(text):
            depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(c, 0)
            if depth == 0 and i < len(text) - 1:
                return None  # "(a)(b)": not one bracketed group
            if depth == 1 and c == ",":
                return "tuple"
    return None


def order_conflict(gold_text: str, answer_text: str) -> bool:
    """A set against a tuple (either way): "(1,2)" vs "\\{1,2\\}" differ where order matters; math-verify
    reads "(1,2)" as an interval or tuple and calls it equal to the set {1,2}. Fixes that false positive."""
    return {bracket_kind(gold_text), bracket_kind(answer_text)} == {"set", "tuple"}


def choice_letter(text: str) -> str | None:
    """The option letter an answer names ("(B)", "B", "\\text{(C)}", "(C) 12", "Answer: A")."""
    match = _CHOICE.match(strip_delimiters(text))
    return match.group(1) if match else None
