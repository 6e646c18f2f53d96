"""What a fallback judge sees and how its reply becomes a verdict: the built-in templates and FILE templates.

A template renders (question, gold, answer) into one prompt and parses the judge's reply into correct,
incorrect, invalid or unparsed. Every field is quoted before it is rendered (`quote_field`):

- capped in length (the question keeps its end, where a few-shot prompt asks it; gold and answer keep their
  start), so a long field cannot crowd the instructions out of the judge's context;
- `&`, `<`, `>` and `#` written as HTML entities, so no field can close its own delimiter (`</model_answer>`,
  `<Candidate's Answer End>`) or open a new `###` heading;
- gold and answer on one line (runs of whitespace become one space): an answer cannot start a line that looks
  like a new field or a new turn ("User:", "Assistant:").

Built-ins, written after each judge's published prompt format (check the model card of the revision you run;
a FILE template reproduces any other format exactly):

- `tinyv` (TinyV-1.5B): question, ground truth and model answer in XML-like tags; replies True / False.
- `general-verifier` (TIGER-Lab general-verifier): `### ` headed fields, a plain "User: ... Assistant:" text
  prompt; reasons briefly and ends with "Final Decision: Yes / No" (the last decision in the reply counts).
- `compass` (CompassVerifier): begin/end delimited fields; replies A (correct), B (incorrect) or C (invalid).

A FILE template is a Jinja template over `question`, `gold` and `answer` (already quoted as above), rendered
in a sandbox with undefined names an error; `parse` (--fallback-parse) is a regular expression whose named
groups `correct`, `incorrect` and optionally `invalid` say what a match means; the last match counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass

from schemas.rollouts import FallbackVerdict

QUESTION_MAX_CHARS = 4000
GOLD_MAX_CHARS = 1000
ANSWER_MAX_CHARS = 1000
ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "#": "&#35;"}
_ESCAPED = re.compile("[&<>#]")
VERDICT_GROUPS = (FallbackVerdict.CORRECT, FallbackVerdict.INCORRECT, FallbackVerdict.INVALID)


def quote_field(text: str | None, limit: int, *, keep_end: bool = False, one_line: bool = True) -> str:
    """`text` capped at `limit` characters, delimiters escaped (see the module docstring)."""
    text = "" if text is None else str(text)
    if one_line:
        text = " ".join(text.split())
    if len(text) > limit:
        text = "…" + text[-(limit - 1):] if keep_end else text[:limit - 1] + "…"
    return _ESCAPED.sub(lambda m: ESCAPES[m.group(0)], text)


def quoted_fields(question: str | None, gold: str | None, answer: str | None) -> dict[str, str]:
    """The three fields as every template receives them."""
    return {"question": quote_field(question, QUESTION_MAX_CHARS, keep_end=True, one_line=False),
            "gold": quote_field(gold, GOLD_MAX_CHARS), "answer": quote_field(answer, ANSWER_MAX_CHARS)}


@dataclass(frozen=True)
class Template:
    """A judge prompt and its reply parser.

    text: the prompt, with {question} {gold} {answer} (built-ins: str.format; FILE: Jinja).
    parse: a regular expression with named groups among correct / incorrect / invalid.
    pick: which match counts, "first" (a judge that answers at once) or "last" (one that reasons first).
    max_new_tokens: the reply's token budget.
    chat: sent as one user message through the judge tokenizer's chat template (when it has one); else as
    plain text.
    """

    name: str
    text: str
    parse: str
    pick: str
    max_new_tokens: int
    chat: bool = True
    jinja: bool = False

    def render(self, question: str | None, gold: str | None, answer: str | None) -> str:
        fields = quoted_fields(question, gold, answer)
        if not self.jinja:
            return self.text.format(**fields)
        from jinja2 import StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                                    keep_trailing_newline=True)
        return environment.from_string(self.text).render(**fields)

    def verdict(self, reply: str | None) -> str:
        """correct / incorrect / invalid from the reply's counting match; unparsed when nothing matches."""
        if not isinstance(reply, str):
            return FallbackVerdict.UNPARSED
        matches = list(re.finditer(self.parse, reply))
        if not matches:
            return FallbackVerdict.UNPARSED
        match = matches[0] if self.pick == "first" else matches[-1]
        hit = [name for name in VERDICT_GROUPS if match.groupdict().get(name) is not None]
        return hit[0] if hit else FallbackVerdict.UNPARSED

    def digest(self) -> str:
        """What a cached verdict depends on of the template (its text, parser and budget)."""
        return hashlib.sha256("\0".join([self.text, self.parse, self.pick, str(self.max_new_tokens),
                                         str(self.chat), str(self.jinja)]).encode()).hexdigest()[:16]


TINYV = Template(
    "tinyv",
    "You are an AI tasked with identifying false negatives in answer verification. A false negative occurs when a "
    "model's answer is essentially correct but is marked as incorrect due to minor discrepancies or formatting "
    "issues. Your job is to analyze the given question, ground truth answer, and model answer to determine if the "
    "model's answer is actually correct despite appearing different from the ground truth.\n\n"
    "<question>{question}</question>\n\n<ground_truth_answer>{gold}</ground_truth_answer>\n\n"
    "<model_answer>{answer}</model_answer>\n\n"
    "Return \"True\" if the model's answer is correct, otherwise return \"False\".",
    r"^\W*(?:(?P<correct>True)|(?P<incorrect>False))\b", "first", 4)

GENERAL_VERIFIER = Template(
    "general-verifier",
    "User: ### Question: {question}\n\n### Ground Truth Answer: {gold}\n\n### Student Answer: {answer}\n\n"
    "For the above question, please verify if the student's answer is equivalent to the ground truth answer.\n"
    "Do not solve the question by yourself; just check if the student's answer is equivalent to the ground truth "
    "answer.\nIf the student's answer is correct, output \"Final Decision: Yes\". If the student's answer is "
    "incorrect, output \"Final Decision: No\". Assistant:",
    r"Final Decision:\s*(?:(?P<correct>Yes)|(?P<incorrect>No))\b", "last", 512, chat=False)

COMPASS = Template(
    "compass",
    "As a grading expert, your task is to determine whether the candidate's final answer matches the provided "
    "standard answer. Judge only the final answer against the standard answer; do not solve the question "
    "yourself. Answer with one letter:\nA: CORRECT\nB: INCORRECT\nC: INVALID (the candidate's answer is "
    "incomplete, repetitive, refuses to answer, or is not an answer to this question)\n\n"
    "<Original Question Begin>: {question} <Original Question End>\n\n"
    "<Standard Answer Begin>: {gold} <Standard Answer End>\n\n"
    "<Candidate's Answer Begin>: {answer} <Candidate's Answer End>\n\n"
    "Judging the correctness of the candidate's answer:",
    r"^\W*(?:(?P<correct>A)|(?P<incorrect>B)|(?P<invalid>C))\b", "first", 4)

BUILTIN_TEMPLATES = {t.name: t for t in (TINYV, GENERAL_VERIFIER, COMPASS)}
FILE_MAX_NEW_TOKENS = 256


def check_parse(parse: str, where: str) -> None:
    """Raises ValueError naming `where` unless `parse` compiles with named groups correct and incorrect."""
    try:
        groups = set(re.compile(parse).groupindex)
    except re.error as exc:
        raise ValueError(f"{where} is not a regular expression ({exc}): {parse!r}") from None
    missing = {FallbackVerdict.CORRECT, FallbackVerdict.INCORRECT} - groups
    unknown = groups - set(VERDICT_GROUPS)
    if missing or unknown:
        raise ValueError(f"{where} needs named groups (?P<correct>...) and (?P<incorrect>...), optionally "
                         f"(?P<invalid>...), and no others; got {sorted(groups)}: {parse!r}")


def load_template(name: str, parse: str | None, max_new_tokens: int | None) -> Template:
    """The built-in template `name`, or the Jinja template in file `name` with `parse` as its parser.
    Raises ValueError naming the fallback.* field (a missing file, a template that does not render, a bad
    parser) before any data moves."""
    if name in BUILTIN_TEMPLATES:
        template = BUILTIN_TEMPLATES[name]
        if parse is not None:
            check_parse(parse, "fallback.parse")
            template = dataclasses.replace(template, parse=parse)
    else:
        if not os.path.isfile(name):
            raise ValueError(f"fallback.template must be one of {tuple(BUILTIN_TEMPLATES)} or a Jinja template "
                             f"file, got {name!r} (no such file)")
        if parse is None:
            raise ValueError(f"fallback.template {name!r} is a file: give fallback.parse, a regular expression "
                             "with named groups correct and incorrect (and optionally invalid)")
        check_parse(parse, "fallback.parse")
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
        template = Template(os.path.basename(name), text, parse, "last", FILE_MAX_NEW_TOKENS, jinja=True)
        try:
            template.render("question", "gold", "answer")
        except Exception as exc:  # noqa: BLE001 - any Jinja error (syntax, undefined name) is the file's problem
            raise ValueError(f"fallback.template {name!r} does not render over question, gold and answer "
                             f"({type(exc).__name__}: {exc})") from None
    if max_new_tokens is not None:
        template = dataclasses.replace(template, max_new_tokens=max_new_tokens)
    return template
