"""Finding a response's final answer and writing answers in the form math-verify compares.

math-verify parses and compares well once it is handed the answer as LaTeX; what it lacks is mostly
around that: it reads a bare answer with no `$` poorly ("\\frac{\\sqrt3}{2}" finds nothing, "2\\sqrt2"
finds 2), "50\\%" vs 0.5 (it rescales percentages), and a gold written as a rounded decimal (the text
it is given is cleaned first: text.clean_text). Each addition below says which failure it fixes;
equality itself stays math-verify's (no tolerances are added: a false positive is worse than a miss).

Everything here is a pure function of strings; about 20-50 µs per response before math-verify runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transforms.verify.parts import join_math_spans
from transforms.verify.text import NAME, clean_text, last_of_chain, strip_delimiters, words_to_number

BARE_MAX_CHARS = 200
BARE_MAX_WORDS = 3


# ------------------------------------------------------------------------------------------------
# The final answer of a response.
# ------------------------------------------------------------------------------------------------

_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{...} / \\fbox{...}, braces balanced (nested allowed); one
    pass over the braces with a stack, so thousands of nested boxes stay linear."""
    if "box" not in text:
        return []
    spans, stack = [], []  # stack: (brace depth, box start, content start)
    depth = 0
    for match in _BOX_TOKENS.finditer(text):
        token = match.group(0)
        if token == "}":
            if stack and stack[-1][0] == depth:
                _, start, content = stack.pop()
                spans.append((start, match.end(), text[content:match.start()]))
            depth = max(depth - 1, 0)
        else:
            depth += 1
            if token != "{":
                stack.append((depth, match.start(), match.end()))
    return sorted(spans)


_BOX_LABEL = re.compile(r"(?<![A-Za-z\\])([a-z](?:_\{?\d\}?)?)\s{0,3}=\s{0,3}\$?\s{0,3}$")
_ENUMERATOR_TEXT = r"\(\s?[a-h]\s?\)|\b[a-h]\)"
_ENUMERATOR = re.compile(_ENUMERATOR_TEXT)
_RESPECTIVELY = re.compile(r"[\s$.,;]{0,6}(?:\\text\{\s*)?respectively", re.IGNORECASE)
_BOX_CONNECTOR = r"(?:\\quad|\\qquad|\\,|\\;|and|or|\\text\{\s{0,3}(?:and|or)?\s{0,3}\}|" + _ENUMERATOR_TEXT + ")"
_BOX_SEPARATOR = re.compile(r"[\s$,;]{0,20}(?:" + _BOX_CONNECTOR + r"[\s$,;]{0,20}){0,3}"
                            r"(?:[a-z](?:_\d)?\s{0,3}=\s{0,3})?")
# Ends at a sentence's end, a line's end or "; " (a second clause), but not at "; " before another
# assignment ("a_1=-13; d=3"); a bracket left open is read to its close ("[3, 1; 1, 3]").
_FINAL_ANSWER = re.compile(r"\b(?:final answer|the answer|answer)\s*(?:is\b|=|:)\s*:?\s*(.+?)"
                           r"(?=\.\s|\.?\s*$|\n|;\s(?!\s*[A-Za-z]\w{0,5}\s*=)|\s+I hope)", re.IGNORECASE)
_HASHES = re.compile(r"^[ \t]*####[ \t]*(.+?)[ \t]*$", re.MULTILINE)
# "Answer: 7", "Final Answer: 7", GSM8K's "A: 7" (a capital A only: "a: 5" is a list item).
_ANSWER_LINE = re.compile(r"^[ \t]*(?:\*\*)?(?:[Ff]inal [Aa]nswer|[Aa]nswer|ANSWER|A)[ \t]*[:：][ \t]*(?:\*\*)?[ \t]*"
                          r"(.+?)[ \t]*$", re.MULTILINE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BOLD_ENDS = re.compile(r"^\s*\*\*\s*|\s*\*\*\s*$")  # "**Final Answer:** 5": the phrase's bold, not the answer's


_MATH_AT_END = re.compile(r"([^$]*?[A-Za-z]{2,}[^$]*?)(?:\$([^$]+)\$|\\\((.+?)\\\))[\s.!]*")
# Words that hedge or bound a value; "or" and "and" are left out: they join the parts of a listed answer.
HEDGE_WORDS = re.compile(r"\b(?:maybe|perhaps|possibly|probably|approximately|about|roughly|around|almost|nearly|"
                         r"either|unless|except|if|least|most|than|unlikely)\b", re.IGNORECASE)
# Words that deny a value or rule it out ("It is not $5$.", "Anything but $5$.").
DENIAL_WORDS = re.compile(r"\b(?:not|no|never|cannot|can't|isn't|wrong|incorrect|false|impossible|none|nobody|rule out|"
                          r"excludes?|fails?|anything but|other than|different from|multiple of|factor of|divisible)\b"
                          r"|n't\b", re.IGNORECASE)


def denies_or_hedges(prose: str, joined: bool = False) -> bool:
    """Words around a value that deny, hedge or bound it; with `joined`, "or" between values hedges too."""
    return bool(DENIAL_WORDS.search(prose) or HEDGE_WORDS.search(prose)
                or (joined and re.search(r"\bor\b", prose, re.IGNORECASE)))
# Words that make a short line a sentence rather than an answer ("5 is not possible", "It is not 5").
_SENTENCE_WORDS = re.compile(r"\b(?:is|are|was|were|be|equals|find|get|that|the|we|it|this|there|so|then|thus|"
                             r"hence|therefore|not|no)\b", re.IGNORECASE)


def _to_bracket_close(text: str, start: int, answer: str) -> str:
    """`answer` (text[start:...]) extended to the close of a bracket it leaves open, within its line."""
    depth = sum(answer.count(c) for c in "([") - sum(answer.count(c) for c in ")]")
    if depth <= 0:
        return answer
    end = start + len(answer)
    line_end = text.find("\n", end)
    for i in range(end, line_end if line_end >= 0 else len(text)):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return answer


def is_bare_answer(text: str) -> bool:
    """The rule for a response that IS the answer ("final answer only" datasets): one line, at most
    200 characters, and no sentence: at most 3 words of two or more letters once LaTeX commands are
    removed ("x = 3", "\\frac{1}{2}", "twenty-one", "x=1 \\text{ or } x=2", "Minimum: 1"). A chain of
    thought is never judged whole."""
    stripped = text.strip()
    if not stripped or "\n" in stripped or len(stripped) > BARE_MAX_CHARS:
        return False
    prose = re.sub(r"\\[A-Za-z]+", " ", re.sub(r"\\text\{[^{}]*\}", " ", stripped))
    if _SENTENCE_WORDS.search(prose) or HEDGE_WORDS.search(prose):
        return False
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", stripped))
    return len(words) <= BARE_MAX_WORDS


TAIL_CHARS = 20_000


def final_answer(text: str) -> tuple[str | None, str]:
    """(the final answer's text, how it was found) of a cleaned response; (None, "none") when there is
    no marked answer and the response is not a bare answer.

    Markers: the last \\boxed{} (with the boxes side by side with it: "\\boxed{1}, \\boxed{2}" answers both
    roots); "final answer is ..." / "the answer is ..."; "#### ..."; a line "Answer: ..." / "A: ...". The one
    that comes last in the response wins (a corrected answer after a drafted one). Without any: the last
    bold span of the last line, else the whole response when it is a bare answer. Only the last 20,000
    characters are searched (the answer ends a response; a megabyte of text costs no more).
    """
    text = text[-TAIL_CHARS:]
    found: list[tuple[int, str, str]] = []  # (position, answer, how)
    boxes = boxed_spans(text)
    if boxes:
        last_start = boxes[-1][0]
        line_start = text.rfind("\n", 0, last_start) + 1
        together = [boxes[-1]]
        for box in reversed(boxes[:-1]):
            between = text[box[1]:together[0][0]]
            # side by side on the answer's line, or stacked on the lines just above it with nothing between
            stacked = between.count("\n") == 1 and not between.strip(" \t\n$,;")
            if box[1] > together[0][0] or not (stacked or box[0] >= line_start and _BOX_SEPARATOR.fullmatch(between)):
                break
            together.insert(0, box)
            line_start = min(line_start, text.rfind("\n", 0, box[0]) + 1)
        labels = [_BOX_LABEL.search(text[line_start:box[0]]) for box in together]
        if len(together) > 1 and all(labels):  # "$x = \\boxed{3}$ and $y = \\boxed{2}$": the labels stay
            answer = ", ".join(f"{label.group(1)} = {content}" for label, (_, _, content) in zip(labels, together))
        else:
            answer = ", ".join(content for _, _, content in together)
        line_end = text.find("\n", boxes[-1][1])
        rest = text[boxes[-1][1]:line_end if line_end >= 0 else len(text)]
        if len(together) > 1 and (_RESPECTIVELY.match(rest) or _ENUMERATOR.search(text[max(0, together[0][0] - 8):together[1][0]])):
            answer += " respectively"  # "\\boxed{3} and \\boxed{4}, respectively": the order is the answer's
        found.append((last_start, answer, "boxed" if len(together) == 1 else "boxes"))
    finals = list(_FINAL_ANSWER.finditer(text))
    if finals:
        answer = _to_bracket_close(text, finals[-1].start(1), finals[-1].group(1))
        while True:  # "Final Answer: The final answer is 5." -> "5"
            inner = _FINAL_ANSWER.findall(answer)
            if not inner or inner[-1] == answer:
                break
            answer = inner[-1]
        answer = _BOLD_ENDS.sub("", answer)
        # "the answer is independent of the choice of $y$" is prose, not an answer: it overrides no marker.
        if not _SENTENCE_WORDS.search(re.sub(r"\$[^$]*\$|\\\(.*?\\\)", " ", answer)):
            found.append((finals[-1].start(), answer, "final answer"))
    for pattern, how in ((_HASHES, "####"), (_ANSWER_LINE, "answer line")):
        matches = list(pattern.finditer(text))
        if matches:
            found.append((matches[-1].start(), matches[-1].group(1), how))
    if found:
        _, answer, how = max(found, key=lambda f: f[0])
        return answer, how
    last_line = text.strip().rsplit("\n", 1)[-1]
    bold = _BOLD.findall(last_line)
    if bold:
        return bold[-1], "bold"
    joined = join_math_spans(text.strip())
    if joined != text.strip() and "\n" not in joined:
        return joined, "spans"  # "$3$ and $\\frac12$": several math spans are one listed answer
    one_line = "\n" not in text.strip() and len(text.strip()) <= BARE_MAX_CHARS
    sentence = _MATH_AT_END.fullmatch(text.strip()) if one_line else None
    if sentence:
        # "We find that $x \\lt 3$.": a one-line sentence ending in its math is answered by that math,
        # unless its words deny or hedge it ("It is not $5$.", "Maybe $3$"): then no answer.
        if denies_or_hedges(sentence.group(1), joined=True):
            return None, "none"
        return sentence.group(2) or sentence.group(3), "sentence"
    if is_bare_answer(text):
        return text.strip(), "bare"
    return None, "none"


# ------------------------------------------------------------------------------------------------
# Normalizing an answer (and a gold) before math-verify parses it.
# ------------------------------------------------------------------------------------------------

# Spellings of the same command (math-verify knows \frac but not every variant in every position).
_SPELLINGS = [
    (re.compile(r"\\[dt]frac"), r"\\frac"), (re.compile(r"\\leqslant|\\leq\b"), r"\\le"),
    (re.compile(r"\\geqslant|\\geq\b"), r"\\ge"), (re.compile(r"\\varnothing|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\left\b|\\right\b|\\bigl\b|\\bigr\b|\\Bigl\b|\\Bigr\b"), ""), (re.compile(r"\\displaystyle"), ""),
    (re.compile(r"\\!"), ""), (re.compile(r"(?<=[,(\[])\\[ ,;]|\\[ ,;](?=[)\],])"), " "),
    (re.compile(r"\\(?:left|right)\."), ""), (re.compile(r"bmatrix|vmatrix|Bmatrix"), "pmatrix"),
    (re.compile(r"\\langle"), "("), (re.compile(r"\\rangle"), ")"),
]
PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercent\b)")
_DOLLAR = re.compile(r"\\\$|\bdollars?\b|\\text\{\s*dollars?\s*\}")
_GROUPED_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\,|\\ |\\;|\\thinspace\s*)(?=\d{3}(?!\d))")
# Spacing commands and a lone backslash around a whole answer ("\\, ( -\\sqrt{3},\\ \\sqrt{3} ) \\"): layout.
_SPACING_ENDS = re.compile(r"^(?:\s|\\[,;:! ]|\\q?quad\b)+|(?:\s|\\[,;:! ]|\\q?quad\b|\\(?=\s*$))+$")
_PLAIN_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WORD_LABEL = re.compile(r"^\s*(?:\\text\{\s*)?(?!(?:wrong|incorrect|not|no|false|error|mistake)\b)"
                         r"([A-Za-z][A-Za-z ]{0,30}?)\s*:\s*\}?\s*(?=\S)", re.IGNORECASE)
_FUNCTION_LABEL = re.compile(r"^\s*[A-Za-z](?:\^\{?-1\}?)?\s*\(\s*([a-z])\s*\)\s*=\s*")
# "x=1 or x=2", "1 \\text{ and } 2", "1 \\quad 2": parts of one answer; an "or" inside a \\text{} phrase
# ("3 \\text{ or more}") is not a separator.
_OR = re.compile(r"\s*(?:\\text\{\s*(?:or|and)\s*\}|\\quad\b|\\qquad\b|\b(?:or|and)\b(?![^{}]*\}))\s*")
DEGREES = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:\^\s*\{?\\circ\}?|\\circ|\s*\\text\{\s*degrees?\s*\}|\s+degrees?\b)")
RADIANS = re.compile(r"\s*(?:\\text\{\s*radians?\s*\}|\bradians?\b|\brad\b)")
_CHOICE = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?\s*([A-E])\s*\)?\s*\}?(?:\s|\.|$)")
_DECIMAL = re.compile(r"-?\d*\.\d+")
_TRAILING_UNIT = re.compile(r"^(.*?\d)\s*(?:\\(?:text|mbox|mathrm)\{\s*([A-Za-z^0-9 ]+?)\s*\}(?:\^\{?(\d)\}?)?|"
                            r"\s([A-Za-z]+(?:\^\d)?(?: [A-Za-z]+(?:\^\d)?){0,2}))\s*$")
# "60 miles per hour", "12 square feet": units named in words, from a vocabulary (never any word: "5 is not
# possible" keeps its words and fails to parse). Fixes misses on answers that name their unit.
_UNIT_VOCABULARY = frozenset("""cm m mm km kg g mg s sec second seconds minute minutes min hour hours h day days
week weeks month months year years inch inches in foot feet ft meter meters metre metres mile miles mph yard yards
centimeter centimeters kilometer kilometers gram grams kilogram kilograms pound pounds lb lbs ounce ounces oz
dollar dollars cent cents unit units square cubic per degree degrees liter liters litre litres ml gallon gallons
people students apples""".split())
_NOT_UNITS = frozenset("""squared cubed square cube thousand thousands million millions billion billions hundred
hundreds dozen dozens half halves third thirds fourth fourths quarter quarters fifth fifths percent factorial times
more less fewer least most only approximately about roughly exactly or and not no none plus minus over under
possible impossible than greater multiple multiples factor factors divisible different except around almost nearly
""".split())
_UNIT_PHRASE = re.compile(r"[a-z]+(?:\^\d)?(?: [a-z]+(?:\^\d)?){0,2}")


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
    percent: bool = False  # written with a percent sign
    plain: tuple = ()  # plain math-verify's parse of the reference as given
    parts: tuple = ()  # the values a list gold lists ("3, \\frac12" -> 2 parts); one part otherwise
    parsed_parts: tuple = ()  # math-verify's parse of each part, when there are several
    ordered: bool = False  # a list whose order is the answer's ("respectively", "(a) ... (b) ...")
    fraction_text: str | None = None  # a percent gold's value over 100 ("62.5\\%" -> "0.625")
    fraction: tuple = ()  # that value, parsed
    fraction_decimals: int | None = None  # its printed precision, for the rounded-gold rule


def qualified_by_words(answer: str) -> bool:
    """A \\text{} phrase whose words change or hedge the value ("3 \\text{ or more}", "5 \\text{ squared}"):
    math-verify drops \\text{} wholesale and would read 3 and 5. Fixes those false positives."""
    for phrase in re.findall(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", answer):
        if set(re.findall(r"[a-z]+", phrase.lower())) & _NOT_UNITS:
            return True
    # The same words written plainly after a value ("2 thirds", "5 squared"); "or"/"and" separate parts.
    words = re.findall(r"(?<![\\A-Za-z])[a-z]{2,}", re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", " ", answer.lower()))
    if set(words) & (_NOT_UNITS - {"or", "and"}):
        return True
    # A relation with nothing on its left ("\\neq 5", "> 3", "\\approx 2") bounds a value, it does not state one.
    return bool(re.match(r"\s*(?:\\n?eq\b|\\ne\b|\\neq|\\approx|\\sim|\\[lg]eq?\b|[<>≈≠]|!=)", answer))


def unit_of(text: str) -> tuple[str, str | None]:
    """(text without a trailing unit, the unit) for "5 \\text{ cm}", "5 cm"; unknown words stay."""
    match = _TRAILING_UNIT.match(text)
    if not match:
        return text, None
    unit = (match.group(2) or match.group(4) or "").strip().lower() + (f"^{match.group(3)}" if match.group(3) else "")
    words = unit.split()
    known = all(w.split("^")[0] in _UNIT_VOCABULARY for w in words)
    # One plain noun after a number ("12 tomatoes") is what was counted; a word that changes the value
    # ("5 squared", "2 thirds", "10 thousand") or hedges it ("3 or more") is not.
    counted = len(words) == 1 and len(unit) >= 3 and unit.isalpha() and unit not in _NOT_UNITS
    if not _UNIT_PHRASE.fullmatch(unit) or not (known or counted):
        return text, None
    return match.group(1), unit


def normalize(text: str, gold: Gold | None = None) -> tuple[str, dict]:
    """An answer (or, with gold None, a reference) as LaTeX for math-verify, and facts about it
    (percent, unit, label variable). Gold-dependent rules (angles, labels) need the prepared gold."""
    facts: dict = {}
    text = strip_delimiters(_SPACING_ENDS.sub("", join_math_spans(_BOLD_ENDS.sub("", text))))
    text = _GROUPED_THOUSANDS.sub("", text)
    for pattern, replacement in _SPELLINGS:
        text = pattern.sub(replacement, text)
    # "50\%" vs 0.5: math-verify rescales percentages; the sign is dropped on both sides instead, so
    # 50% = 50 and never 0.5.
    text, percents = PERCENT.subn("", text)
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
    if label and not _FUNCTION_LABEL.search(text, label.end()) and not re.search(r",\s*[A-Za-z]\s*\(\s*[a-z]\s*\)\s*=", text):  # "f(x) = 2x" -> "2x", remembering x (the same function may use another variable name)
        facts["variable"] = label.group(1)
        text = text[label.end():]
    word_label = _WORD_LABEL.match(text)
    if word_label and (gold is None or ":" not in gold.text) and not _CHOICE.match(text):
        text = text[word_label.end():]  # "Minimum: 1" -> "1"
    text = last_of_chain(text)
    if gold is not None and "=" not in gold.text and text.count("=") == 1 and "," not in text:
        left, right = (side.strip() for side in text.split("="))
        if right and NAME.fullmatch(left):
            text = right  # "m_{\\max} = n^2 - 1": a label on the value (math-verify misreads some names)
    text, facts["unit"] = unit_of(text)
    text = _OR.sub(", ", text).strip(" ,")
    if gold is not None:
        if gold.angle == "radians":
            text = degrees_to_radians(text)
        if gold.variable and facts.get("variable") and facts["variable"] != gold.variable \
                and not re.search(rf"(?<![A-Za-z\\]){gold.variable}(?![A-Za-z])", text):
            text = re.sub(rf"(?<![A-Za-z\\]){facts['variable']}(?![A-Za-z])", gold.variable, text)
    return text.strip(), facts


def degrees_to_radians(text: str) -> str:
    """"30^\\circ" -> "\\frac{30\\pi}{180}" wherever a number carries a degree sign or the word degrees."""
    return DEGREES.sub(lambda m: rf"\frac{{{m.group(1)}\pi}}{{180}}", text)


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


_LETTER_WITH_VALUE = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?([A-E])\s*[).:,]\s*\}?\s*(\S.*)$", re.DOTALL)


def letter_and_value(text: str) -> tuple[str, str] | None:
    """("C", "f(15) = -5") for an answer "C) f(15) = -5": an option letter followed by a stated value."""
    match = _LETTER_WITH_VALUE.match(strip_delimiters(text))
    return (match.group(1), match.group(2).strip()) if match else None


_OPTION = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?(?:(?:[Oo]ption|[Cc]hoice)\s*:?\s*)?(?:\(\s*([A-E])\s*\)|([A-E])(?=\s*(?:$|[.,;:)}]|\s+\d)))")


def choice_letter(text: str) -> str | None:
    """The option letter an answer names ("(B)", "B", "\\text{(C)}", "(C) 12", "Answer: A"); None for a
    hedge naming another option too ("A or B") or a word that starts with a capital A ("A prime ...")."""
    text = strip_delimiters(text)
    match = _OPTION.match(text)
    if not match:
        return None
    if re.search(r"(?<![A-Za-z\\])[A-E](?![A-Za-z])", text[match.end():]):
        return None
    return match.group(1) or match.group(2)
