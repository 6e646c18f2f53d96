"""Plain math-verify as a user calls it: the baseline the "math" verifier never falls below, its second path.

`verify(parse(g), parse(x))` with g the gold wrapped in `$...$` unless it has `$` or `\\boxed`, default
settings, any exception a rejection (see transforms/verify/math.py for where it runs). Also what both paths
share: math-verify's parse of the last strings parsed, and a parse printed as an extracted answer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache
from itertools import groupby

from math_verify import parse, verify

from transforms.verify.answers import Gold
from transforms.verify.refusals import covers
from transforms.verify.registry import MAX_EXTRACTED_CHARS
from transforms.verify.text import math_key, strip_delimiters

# math-verify's parse of the last strings parsed, so that plain math-verify's reading of the project's final
# answer (usually the very string the project's path just parsed) is not parsed twice.
_RECENT_PARSES: OrderedDict[str, list] = OrderedDict()
_RECENT_PARSES_SIZE = 64


def remember_parse(text: str, parsed: list) -> None:
    _RECENT_PARSES[text] = parsed
    _RECENT_PARSES.move_to_end(text)
    if len(_RECENT_PARSES) > _RECENT_PARSES_SIZE:
        _RECENT_PARSES.popitem(last=False)


def plain_wrap(text: str) -> str:
    """The gold as plain math-verify is given it: in `$...$` unless it has `$` or `\\boxed` already."""
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def plain_parse(text: str, timeout_s: int) -> list:
    """math-verify's parse with default settings; any exception (its timeout included) is nothing."""
    if text in _RECENT_PARSES:
        return _RECENT_PARSES[text]
    try:
        return parse(text, parsing_timeout=timeout_s)
    except Exception:  # noqa: BLE001 - plain math-verify as a user calls it: an exception is a rejection
        return []


def _plain_first_candidate(text: str) -> str | None:
    """The text plain math-verify's parse tries first: its extraction regexes in priority order, the rightmost
    match of the first group that matches (math_verify.parser.extract_target_from_pred, without the parse).
    About a quarter of a parse's cost; it tells when a parse of the whole response would read the same answer
    as one already compared."""
    groups = _plain_pattern_groups()
    for group in groups:
        best = None
        for pattern in group:
            for match in pattern.finditer(text):
                if best is None or (match.end(), -match.start()) > (best.end(), -best.start()):
                    best = match
        if best is not None:
            return best.group(0)
    return None


def _bare_text(text: str) -> str:
    """The text without delimiters, a box around it, spaces or braces: " 26" and "\\boxed{26}" are "26"."""
    text = strip_delimiters(text)
    boxed = re.fullmatch(r"\\boxed\s*\{(.*)\}", text, re.DOTALL)
    return math_key(boxed.group(1) if boxed else text)


@lru_cache(maxsize=1)
def _plain_pattern_groups() -> list[list]:
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, get_extraction_regexes

    patterns = [(pattern, priority) for target_patterns, _ in
                get_extraction_regexes([LatexExtractionConfig(), ExprExtractionConfig()])
                for pattern, priority in target_patterns]
    ordered = sorted(patterns, key=lambda p: p[1])
    return [[pattern for pattern, _ in group] for _, group in groupby(ordered, key=lambda p: p[1])]


def _plain_verify(gold_parsed, predicted, timeout_s: int) -> bool:
    if not gold_parsed or not predicted:
        return False
    try:
        return bool(verify(list(gold_parsed), predicted, timeout_seconds=timeout_s))
    except Exception:  # noqa: BLE001 - as above
        return False


def plain_verdict(reference: str, response: str, timeout_s: int = 5) -> bool:
    """Plain math-verify as a user calls it, the baseline this verifier never falls below:
    `verify(parse(g), parse(response))` with g the reference wrapped in `$...$` unless it already has `$`
    or `\\boxed`, default settings, any exception a rejection."""
    return _plain_verify(plain_parse(plain_wrap(reference), timeout_s), plain_parse(response, timeout_s), timeout_s)


def answer_text(parsed) -> str:
    """A math-verify parse as an extracted answer: its string, else its first value printed."""
    text = next((x for x in parsed if isinstance(x, str)), None)
    if text is None:
        text = str(parsed[0])
    return text[:MAX_EXTRACTED_CHARS]


def plain_credit(gold: Gold, response: str, text: str, found: str | None, how: str, whole,
                 timeout_s: int) -> tuple[str, str] | None:
    """What plain math-verify credits, (its extracted string, its parsed value printed), or None: first the
    project's final answer read by math-verify alone, then the whole response as a user would pass it,
    unless plain's parse would try that same answer first (_plain_first_candidate) and it was just read
    and rejected."""
    if not gold.plain:
        return None
    credited, read = None, False
    if found is not None:
        predicted = plain_parse(plain_wrap(found), timeout_s)
        read = bool(predicted)
        if _plain_verify(gold.plain, predicted, timeout_s):
            credited = answer_text(predicted), str(predicted[0])
            if covers(credited[0], found) and covers(credited[1], credited[0]):
                return credited
    if read and credited is None and _bare_text(_plain_first_candidate(response) or "") == _bare_text(found):
        return None  # plain tries this same text first, and just rejected it
    predicted = whole if whole and text == response else plain_parse(response, timeout_s)
    if _plain_verify(gold.plain, predicted, timeout_s):
        return answer_text(predicted), str(predicted[0])
    return credited
