"""Text as math-verify can read it: a response or gold cleaned of what math-verify misreads, and plain string
forms shared by the answer and question rules.

math-verify parses well once it is handed LaTeX; what it lacks is around that: unicode, number words,
JSON-mangled backslashes, HTML, full-width forms. Each addition below says which failure it fixes.

Pure functions of strings; microseconds per call.
"""

from __future__ import annotations

import re

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


_DELIMITERS = re.compile(r"^\s*(?:\$\$?|\\\(|\\\[|\*\*)\s*|\s*(?:\$\$?|\\\)|\\\]|\*\*)\s*$")


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
NAME = re.compile(r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:'+)?(?:_\{?\\?\w+\}?|_\{[^{}]{1,12}\})?(?:\^\{?-1\}?)?(?:\([^()]{1,12}\))?"
                  r"|\\text\{[^{}]*\}|[A-Za-z]{3,}(?: [A-Za-z]+)*|\(\s*[a-z](?:\s*,\s*[a-z])+\s*\)")


def math_key(text: str) -> str:
    """A form for finding an expression inside a question: no spaces, delimiters, braces or sizing."""
    text = re.sub(r"\\(?:left|right|[,;!: ]|displaystyle)|[\s{}$]", "", text)
    return re.sub(r"\\[dt]frac", r"\\frac", text)


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
