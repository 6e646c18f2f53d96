"""What a question asks: the expressions and variables it names, its fill-in blank, the options it lists.

The rules that read the question (labels it names, answers listed in the order it asks, option values) use
these; `question` is the prompt's text (a chat's last user message), its last characters only.

Pure functions of strings; microseconds per call.
"""

from __future__ import annotations

import re

from transforms.verify.parts import MATH_SPAN
from transforms.verify.text import ARITHMETIC, NAME, clean_text, math_key, strip_delimiters


def states_no_value(answer: str, gold_text: str, question: str | None = None) -> bool:
    """An equation whose left side is an expression ("2x = 10", "x^2 = 4") against a gold that is a
    value: math-verify compares the right side and calls "2x = 10" equal to 10. The left side is a label
    instead when it is a single name ("x", "m_{\\max}", "f(x)", "\\text{Area}") or an expression the
    question names ("a + b = 12" for "find $a+b$", "|p - q| = 7", "\\cos\\phi = \\frac13"). Fixes that
    false positive."""
    if "=" in gold_text or answer.count("=") != 1 or re.search(r"[<>]|\\[lg]e", answer):
        return False
    left = answer.split("=")[0].strip()
    if NAME.fullmatch(left) or ARITHMETIC.fullmatch(left):
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
