"""Multi-part answers: a gold or an answer that lists several values, split into its parts and matched.

"$3$,$\\frac{1}{2}$", "x=2 \\text{ or } x=-6", "\\boxed{3} \\text{ and } \\boxed{4}", "1 \\pm \\sqrt 2": each is
several values. A list of solutions matches as a multiset (each gold part against a different answer part,
none left over on either side); a list marked as ordered ("respectively", "(a) ... (b) ...") matches in
order; a tuple "(1, 2)" or an interval "[1, 2)" is one part, compared whole by math-verify.

Pure functions of strings; the comparison of two parts is passed in (math-verify's, in the verifier).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Most parts matched one by one; a longer list is compared whole (a set) by math-verify alone.
MAX_PARTS = 12

# An inline math span, $...$ or \\(...\\): its content is group 1 or group 2.
MATH_SPAN = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_SPAN_GLUE = re.compile(r"\s*(?:,|;|\band\b|\bor\b|&)?\s*")
_ENUMERATED = re.compile(r"(?:^|[\s,;])\(?([a-h]|i{1,3}|iv)[).]\s+")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)")


def join_math_spans(text: str) -> str:
    """A gold written as several math spans ("$3$,$\\frac{1}{2}$", "$x=2$, $x=-6$", "$1$ and $2$") as one
    comma list ("3, \\frac{1}{2}"); anything else unchanged. Fixes: the spans read as one garbled answer."""
    spans = list(MATH_SPAN.finditer(text))
    if len(spans) < 2 or text[:spans[0].start()].strip() or text[spans[-1].end():].strip(" .\n"):
        return text
    if not all(_SPAN_GLUE.fullmatch(text[a.end():b.start()]) for a, b in zip(spans, spans[1:])):
        return text
    return ", ".join((span.group(1) or span.group(2)).strip() for span in spans)


_MEMBER_OF = re.compile(r"^[A-Za-z]\s*\\in\s*(?=\\\{)")


def list_parts(text: str) -> list[str]:
    """A normalized answer's (or gold's) parts: its top-level list, or the members of a braced set of
    several ("\\{1, 2\\}", "x \\in \\{-6, 2\\}"), a member written twice counted once."""
    found = split_parts(strip_enumeration(text))
    if len(found) == 1:
        member = _MEMBER_OF.sub("", found[0])
        if member.startswith("\\{") and member.endswith("\\}"):
            inner = list(dict.fromkeys(split_parts(member[2:-2])))
            if len(inner) >= 2:
                return inner
    return found


def is_enumerated(text: str) -> bool:
    """Parts marked "(a) ... (b) ..." or "a. ..., b. ...": a question asking in parts, an answer in parts."""
    return len(_ENUMERATED.findall(text)) >= 2


def is_ordered(text: str) -> bool:
    """A list whose order is part of the answer: "3, 4 respectively", "(a) 3 (b) 4", "a. 3, b. 4"."""
    return bool(re.search(r"\brespectively\b", text, re.IGNORECASE)) or len(_ENUMERATED.findall(text)) >= 2


def strip_enumeration(text: str) -> str:
    """"(a) 3, (b) 4" -> "3, 4"; "respectively" dropped."""
    text = re.sub(r",?\s*\\?(?:text\{\s*)?respectively\s*\}?", "", text, flags=re.IGNORECASE)
    if len(_ENUMERATED.findall(text)) >= 2:
        text = _ENUMERATED.sub(", ", text)
    return text.strip(" ,;")


def split_parts(text: str) -> list[str]:
    """The top-level parts of a normalized answer, split at commas and semicolons outside brackets
    ("3, \\frac12" -> 2 parts; "(1, 2)" and "[1, 2)" -> 1 part; "\\{1, 2\\}" -> 1 part, a set)."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":  # "\\{" opens a set; "\\," is a thin space, never a separator
            depth += {"{": 1, "}": -1}.get(text[i + 1:i + 2], 0)
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c in ",;" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def expand_plus_minus(part: str) -> list[str]:
    """"1 \\pm \\sqrt{2}" -> ["1 + \\sqrt{2}", "1 - \\sqrt{2}"], "\\pm 2" -> ["2", "-2"]; one sign only."""
    if len(_PLUS_MINUS.findall(part)) != 1:
        return [part]
    head, tail = _PLUS_MINUS.split(part)
    head, tail = head.strip(), tail.strip()
    if not head:
        return [tail, f"-{tail}"]
    return [f"{head} + {tail}", f"{head} - {tail}"]


def parts_with_signs(parts: list[str]) -> list[str]:
    return [expanded for part in parts for expanded in expand_plus_minus(part)]


def match_parts(gold_parts: list[str], answer_parts: list[str], ordered: bool,
                equal: Callable[[str, str], bool]) -> bool:
    """Every gold part matched by its own answer part and no answer part left over: in order when
    `ordered`, else as a multiset (a small backtracking search: parts are few)."""
    if len(gold_parts) != len(answer_parts):
        return False
    if ordered:
        return all(equal(g, a) for g, a in zip(gold_parts, answer_parts))
    known: dict[tuple[int, int], bool] = {}

    def same(g: int, a: int) -> bool:
        if (g, a) not in known:
            known[(g, a)] = equal(gold_parts[g], answer_parts[a])
        return known[(g, a)]

    used = [False] * len(answer_parts)

    def assign(g: int) -> bool:
        if g == len(gold_parts):
            return True
        for a in range(len(answer_parts)):
            if not used[a] and same(g, a):
                used[a] = True
                if assign(g + 1):
                    return True
                used[a] = False
        return False

    return assign(0)
