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

from transforms.parts import MATH_SPAN, join_math_spans

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
_ROOT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\((?:[^()]|\([^()]*\))*\)|\{[^{}]*\})")
# Spellings of the same command (math-verify knows \frac but not every variant in every position).
_SPELLINGS = [
    (re.compile(r"\\[dt]frac"), r"\\frac"), (re.compile(r"\\leqslant|\\leq\b"), r"\\le"),
    (re.compile(r"\\geqslant|\\geq\b"), r"\\ge"), (re.compile(r"\\varnothing|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\left\b|\\right\b|\\bigl\b|\\bigr\b|\\Bigl\b|\\Bigr\b"), ""), (re.compile(r"\\displaystyle"), ""),
    (re.compile(r"\\!"), ""), (re.compile(r"(?<=[,(\[])\\[ ,;]|\\[ ,;](?=[)\],])"), " "),
    (re.compile(r"\\(?:left|right)\."), ""), (re.compile(r"bmatrix|vmatrix|Bmatrix"), "pmatrix"),
    (re.compile(r"\\langle"), "("), (re.compile(r"\\rangle"), ")"),
]

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}


def words_to_number(text: str) -> int | None:
    """'twenty-one' -> 21, 'one hundred and five' -> 105, 'three thousand two hundred' -> 3200, below a
    million, by the grammar of written numbers ("two and three" or "one two three" is None, never a sum).
    Fixes: a number written in words is not a number to math-verify."""
    tokens = [t for t in re.split(r"[\s-]+", text.strip().lower()) if t]
    position = 0

    def peek():
        return tokens[position] if position < len(tokens) else None

    def take():
        nonlocal position
        position += 1
        return tokens[position - 1]

    def below_hundred() -> int | None:
        word = peek()
        if word in _NUMBER_WORDS:
            take()
            return _NUMBER_WORDS[word]
        if word in _TENS:
            value = _TENS[take()]
            if peek() in _NUMBER_WORDS and 0 < _NUMBER_WORDS[peek()] < 10:
                value += _NUMBER_WORDS[take()]
            return value
        return None

    def below_thousand() -> int | None:
        value = below_hundred()
        if value is not None and peek() == "hundred":
            if not 0 < value < 10:
                return None
            take()
            value *= 100
            if peek() == "and":
                take()
                rest = below_hundred()
                return None if rest is None else value + rest
            rest = below_hundred()
            value += rest or 0
        return value

    if not tokens:
        return None
    value = below_thousand()
    if value is not None and peek() == "thousand":
        take()
        value *= 1000
        if peek() == "and":
            take()
        rest = below_thousand()
        value += rest or 0
    return value if value is not None and position == len(tokens) else None


# A backslash straight before a digit is no LaTeX command: "\\boxed{\\15}" is "\\$15" whose "$" was lost
# (fixes "\\15" read as nothing); "\\\\" row breaks ("1 \\\\2") are left alone.
_STRAY_BACKSLASH = re.compile(r"(?<!\\)\\(?=\d)")


# Full-width forms ("＞", "，", "（３）") are their ASCII characters shifted by 0xFEE0 (NFKC would also fold
# "²" and "½", which the table below reads). Fixes: "x＞3" and "（1，2）" parsed as nothing.
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# HTML left in golds and answers: "2<sup>n</sup> ≥ n<sup>3</sup>" keeps both exponents (dropping the tags
# lost one and made "2^n >= n^2" equal); other tags are markup.
_HTML_SCRIPT = re.compile(r"<(sup|sub)>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"</?(?:b|i|em|strong|span|br|p|div|code)\b[^<>]{0,80}>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Control characters back to the LaTeX commands they came from, unicode math to LaTeX, HTML
    exponents to LaTeX, stray backslashes before digits dropped."""
    for pattern, replacement in _CONTROL:
        text = pattern.sub(replacement, text)
    text = _STRAY_BACKSLASH.sub("", text)
    if "<" in text:
        text = _HTML_SCRIPT.sub(lambda m: ("^{" if m.group(1).lower() == "sup" else "_{") + m.group(2) + "}", text)
        text = _HTML_TAG.sub(" ", text)
    if not text.isascii():
        text = text.translate(_FULL_WIDTH)
        for _ in range(4):  # "√(2−√3)": the inner root too, innermost last
            rooted = _ROOT.sub(lambda m: r"\sqrt{" + m.group(1)[1:-1] + "}" if m.group(1)[:1] in "({" else
                               r"\sqrt{" + m.group(1) + "}", text)
            if rooted == text:
                break
            text = rooted
        text = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", text)
        for symbol, latex in _UNICODE.items():
            text = text.replace(symbol, latex)
    return text


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

_DELIMITERS = re.compile(r"^\s*(?:\$\$?|\\\(|\\\[|\*\*)\s*|\s*(?:\$\$?|\\\)|\\\]|\*\*)\s*$")
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


# A computation with numbers only ("5 \\times 4", "3+4", "4!", "\\frac{10}{2}"): its equation states a value.
ARITHMETIC = re.compile(r"(?:[\d.\s+\-*/^!()]|\\times|\\cdot|\\div|\\frac|\\binom|\\sqrt|\{|\})+")
# A single name: "x", "w_1", "m_{\\max}", "f(x)", "f^{-1}(3)", "\\text{Area}", "Area", "(a, b)", "\\theta".
_NAME = re.compile(r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:'+)?(?:_\{?\\?\w+\}?|_\{[^{}]{1,12}\})?(?:\^\{?-1\}?)?(?:\([^()]{1,12}\))?"
                   r"|\\text\{[^{}]*\}|[A-Za-z]{3,}(?: [A-Za-z]+)*|\(\s*[a-z](?:\s*,\s*[a-z])+\s*\)")


def math_key(text: str) -> str:
    """A form for finding an expression inside a question: no spaces, delimiters, braces or sizing."""
    text = re.sub(r"\\(?:left|right|[,;!: ]|displaystyle)|[\s{}$]", "", text)
    return re.sub(r"\\[dt]frac", r"\\frac", text)


def states_no_value(answer: str, gold_text: str, question: str | None = None) -> bool:
    """An equation whose left side is an expression ("2x = 10", "x^2 = 4") against a gold that is a
    value: math-verify compares the right side and calls "2x = 10" equal to 10. The left side is a label
    instead when it is a single name ("x", "m_{\\max}", "f(x)", "\\text{Area}") or an expression the
    question names ("a + b = 12" for "find $a+b$", "|p - q| = 7", "\\cos\\phi = \\frac13"). Fixes that
    false positive."""
    if "=" in gold_text or answer.count("=") != 1 or re.search(r"[<>]|\\[lg]e", answer):
        return False
    left = answer.split("=")[0].strip()
    if _NAME.fullmatch(left) or ARITHMETIC.fullmatch(left):
        return False  # a name, or a computation with no unknown ("5 \\times 4 = 20", "4! = 24")
    return not (question and names_in_question(left, asked_part(question) or question))


def names_in_question(expression: str, question: str) -> bool:
    """Does the question name this expression as a whole ("a+b" in "Find $a + b$.", "Then $x_1+x_2=\\_\\_$"),
    not inside a longer one ("x+1" in "x + 15", "2x" in "2x + 3 = 13") and not as the left side of an
    equation it states ("Solve 2x = 10")?"""
    return len(math_key(expression)) >= 2 and named_at(expression, question) is not None


def named_at(expression: str, question: str) -> int | None:
    """Where the question first names this expression as a whole (see names_in_question), or None."""
    key = math_key(expression)
    if not key:
        return None
    text = re.sub(r"\\(?:left|right|displaystyle|[,;!: ])|[{}$]", " ", clean_text(question))
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    pattern = r"(?<![\w\\])" + r"\s*".join(map(re.escape, key)) + r"(?!\w)"
    for match in re.finditer(pattern, text):
        before, after = text[:match.start()].rstrip()[-1:], text[match.end():].lstrip()
        if before and before in "+-*/^=<>" or after[:1] and after[:1] in "+-*/^" \
                or re.match(r"\\(?:cdot|times|div)\b", after):
            continue  # a piece of a longer expression ("2x" in "2x + 3 = 13")
        if not after[:1] in ("=", "<", ">") or _BLANK.match(after[1:].lstrip()):
            return match.start()
    return None


_ASKING = re.compile(r"\b(?:find|what(?:'s| is| are)|compute|determine|evaluate|calculate|solve for|express|give)\b",
                     re.IGNORECASE)


_CONDITION = re.compile(r"\b(?:with|such that|for|if|where|given|satisfying|so that|when|which|that)\b|[.?;]\s|[.?]$")


def asked_part(question: str | None) -> str | None:
    """The part of a question that asks, up to its first condition ("find $n$" of "If $m+n=9$ and $m-n=3$,
    find $n$."; "Find all functions $f$" of "Find all functions $f$ with ..."), or None."""
    if not question:
        return None
    asks = list(_ASKING.finditer(question))
    if not asks:
        return None
    asked = question[asks[-1].start():]
    condition = _CONDITION.search(asked, asks[-1].end() - asks[-1].start())
    return asked[:condition.start()] if condition else asked


_BLANK_IN_QUESTION = re.compile(r"([^$=]{1,80}?)=\s*\$?\s*(?:\\_\s*){2,}|([^$=]{1,80}?)=\s*\$?\s*_{3,}")


def blank_expression(question: str | None) -> str | None:
    """What a fill-in-the-blank question asks for: the left side of its last "= \\_\\_\\_" ("x_1+x_2" of
    "then $x_1+x_2=\\_\\_\\_$"); None without one."""
    if not question or ("\\_" not in question and "___" not in question):
        return None
    blanks = list(_BLANK_IN_QUESTION.finditer(clean_text(question)))
    if not blanks:
        return None
    left = (blanks[-1].group(1) or blanks[-1].group(2)).strip()
    left = re.split(r"\$|,\s|\bthen\b|\bis\b", left)[-1].strip()
    return left or None


def asks_for_several(question: str | None) -> bool:
    """A question asking for named quantities in turn, so that its answer lists them in that order: variables
    in math spans of their own ("Find $x$ and $y$."; not "Find all pairs $(x, y)$", a list of solutions),
    "the mean and the median", "the sum and product", or "respectively" in the asking part (a problem's
    statement says "respectively" for other reasons: "D and E lie on AB and AC, respectively")."""
    asked = asked_part(question)
    if asked is None:
        return False
    if re.search(r"\brespectively\b", asked, re.IGNORECASE):
        return True
    single = [span.strip() for span in math_spans(asked) if re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*", span)]
    if len(set(single)) >= 2:
        return True
    return bool(re.match(r"\w+(?:'s| is| are)?\s+the\s+[a-z]+(?: [a-z]+)?,?\s+and\s+(?:the\s+)?[a-z]", asked,
                         re.IGNORECASE))


def asked_variables(question: str | None) -> set[str]:
    """The single-letter variables named in the math of the asking part ("find $n$" -> {"n"})."""
    asked = asked_part(question)
    return math_variables(asked) if asked is not None else set()


def math_spans(text: str | None) -> list[str]:
    """The contents of a text's inline math spans ($...$, \\(...\\))."""
    return [a or b for a, b in MATH_SPAN.findall(text or "")]


def math_variables(text: str | None) -> set[str]:
    """The single-letter variables in the math spans of a text."""
    spans = " ".join(math_spans(text))
    return set(re.findall(r"(?<![A-Za-z\\])([A-Za-z])(?![A-Za-z])", re.sub(r"\\[A-Za-z]+", " ", spans)))


def order_by_question(answer_parts: list[str], question: str | None) -> list[str] | None:
    """Labelled parts ("y = 2", "x = 3") in the order the question names their labels ("find $x$ and $y$"
    -> x first), so that they meet the gold's values in order; None where they are not all labelled with
    distinct labels the question names."""
    if not question or len(answer_parts) < 2 or any(part.count("=") != 1 for part in answer_parts):
        return None
    labels = [part.split("=")[0].strip() for part in answer_parts]
    labels = [re.sub(r"^\\text\{\s*([^{}]*?)\s*\}$", r"\1", label) for label in labels]
    if len({math_key(label) for label in labels}) != len(labels):
        return None
    asked = asked_part(question) or question
    positions = [named_at(label, asked) for label in labels]
    if any(p is None for p in positions):
        return None
    return [answer_parts[i] for i in sorted(range(len(labels)), key=lambda i: positions[i])]


# What a fill-in-the-blank question puts after "=": "\\_\\_\\_", "____", "?", "\\square", "(\\quad)", nothing.
_BLANK = re.compile(r"(?:\\_|_|\?|\\square|\\underline|\\quad|\(\s*\)|\.|$)")  # an expression ("2x", "x^2", "ab"): the right side is not its value


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
        if right and _NAME.fullmatch(left):
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


def bracket_kind(text: str) -> str | None:
    """"set" for "\\{...\\}" ("solutions" when its members are tuples), "tuple" for "(a, b, ...)" with a comma at the top level, else None."""
    text = text.strip()
    if text.startswith("\\{") and text.endswith("\\}"):
        # "\\{(3,2),(-3,2)\\}" is a set of solutions, each a tuple: a list of the same tuples is its equal.
        return "solutions" if text[2:].lstrip().startswith("(") else "set"
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


# Options a question lists: "(A) 10 (B) 12", "A) ...\\\\ B) ...", "\\text{A)}\\ & ... &" in an align block.
_OPTION_MARK = re.compile(r"\\text(?:bf)?\{\s*\(?([A-E])\s*[).:]?\s*\}")
_OPTION_LAYOUT = re.compile(r"\\\\|&|\\noindent|\\begin\{[a-z*]+\}|\\end\{[a-z*]+\}|\\hline")
_OPTION_ITEM = re.compile(r"(?:^|\s)\(?([A-E])[).:]\s*(.+?)(?=\s+\(?[A-E][).:]\s|$)", re.MULTILINE)


def question_options(question: str | None) -> dict[str, str]:
    """{letter: the option's text} for a question that lists at least two options, else {}."""
    if not question:
        return {}
    text = _OPTION_MARK.sub(lambda m: f" {m.group(1)}) ", clean_text(question)[-4000:])
    text = _OPTION_LAYOUT.sub("\n", text).replace("\\ ", " ")
    options = {}
    for letter, value in _OPTION_ITEM.findall(text):
        value = strip_delimiters(value.strip(" .;,"))
        if value:
            options.setdefault(letter, value)
    return options if len(options) >= 2 else {}


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
