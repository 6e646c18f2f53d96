"""The verifier contract: what a verifier is, the registry of built-in ones, and the one door for plug-ins.

A verifier name, as `VerifierConfig.sources` maps a data_source to it, is a built-in of VERIFIERS ("math",
"exact", "choice", or "numeric:TOL": NAME:ARG where the entry's name says it takes an argument) or the
import path of a function, "package.module:function" (the plug-in door). Built-in factories are named by
import path too and loaded through the same door (load) on first use, so that this module imports no
verifier: the verifiers import Verdict from here, and importing the package (for VerifierConfig) loads no
math-verify.

make_verifier gives every verifier one form, whatever its judge returns, and keeps exceptions inside the
row: a verifier's prepare and judge, as make_verifier returns them, never raise for a row's data.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable, NamedTuple, Protocol

from schemas.rollouts import VERDICT_STATUSES, VerifierStatus


class VerifierSettings(Protocol):
    """What the registry and the pool read of a VerifierConfig (transforms/verify/__init__.py, which imports
    this module: a Protocol here instead of an import back keeps the package free of import circles)."""

    num_workers: int | None
    timeout_s: int
    hard_timeout_s: float
    task_size: int
    judge: str
    sources: str

    def source_verifiers(self) -> dict[str, str]: ...

MAX_EXTRACTED_CHARS = 512
DEFAULT_VERIFIER = "math"  # the verifier of every data_source that `sources` does not map
IMPORT_PATH = re.compile(r"[\w.]+:\w+")


class Verdict(NamedTuple):
    """One response's verdict: verifier_score (1.0, 0.0 or None), verifier_status, extracted_answer, and
    verifier_rule (what decided it; None where the status is neither ok nor no_answer)."""

    score: float | None
    status: str
    answer: str | None
    rule: str | None


class Verifier(NamedTuple):
    """A verifier: prepare(reference, timeout_s) -> gold (None: a reference it cannot judge), once per distinct
    reference, and judge(gold, response, timeout_s[, question]) -> (score, status, answer[, rule]) per response.
    A factory's judge may leave out the question and the rule; make_verifier's takes the question always,
    returns a Verdict (the rule defaulting to the verifier's name) and never raises."""

    prepare: Callable[[str, int], Any]
    judge: Callable[..., tuple]


class Builtin(NamedTuple):
    """A built-in verifier: its factory, (argument or None, config) -> Verifier, or the factory's import path
    (loaded on first use: a worker process finds it by itself), and what the option's help says of it."""

    factory: str | Callable[[str | None, VerifierSettings], Verifier]
    note: str = ""


# Name (NAME:ARG where it takes an argument) -> built-in. Registering a built-in verifier is one entry here.
VERIFIERS: dict[str, Builtin] = {
    "math": Builtin("transforms.verify.math:verifier"),
    "exact": Builtin("transforms.verify.simple:exact"),
    "numeric:TOL": Builtin("transforms.verify.simple:numeric", "absolute tolerance"),
    "choice": Builtin("transforms.verify.simple:choice", "option letter"),
}

# Stable names of functions whose module has moved. VerifierConfig.judge's default is stored in every output
# shard's settings and in the resume fingerprint, so it must keep resolving, with no module of that name.
ALIASES = {"transforms.verifier:judge_response": "transforms.verify.math:judge_response"}


def load(path: str):
    """The function an import path ("package.module:function", or a stable alias) names: the one door through
    which every verifier, built-in or plug-in, and the math verifier's judge are loaded."""
    module, function = ALIASES.get(path, path).split(":")
    return getattr(importlib.import_module(module), function)


def verifier_names() -> str:
    """The built-in names, as an error lists them: "math, exact, numeric:TOL, choice"."""
    return ", ".join(VERIFIERS)


def _help(name: str) -> str:
    note = "the default for every other source" if name == DEFAULT_VERIFIER else VERIFIERS[name].note
    return f"`{name}`" + (f" ({note})" if note else "")


def sources_help() -> str:
    """The help of the option that sets VerifierConfig.sources, naming every built-in."""
    return ("which verifier judges which `data_source`, e.g. `gsm8k=numeric:0.001,mmlu=choice,mine=pkg.mod:fn`; "
            "verifiers: " + ", ".join(_help(name) for name in VERIFIERS) + ", or a function by import path "
            "taking (reference, response, timeout_s)")


def _builtin(name: str) -> tuple[Builtin, str | None] | None:
    """(built-in, argument or None) of a built-in name ("exact", "numeric:0.01"), else None: a name with an
    argument where its entry takes none ("exact:fn") is an import path."""
    head, colon, argument = name.partition(":")
    for key, builtin in VERIFIERS.items():
        key_head, key_colon, _ = key.partition(":")
        if key_head == head and bool(key_colon) == bool(colon):
            return builtin, argument if colon else None
    return None


def _build(builtin: Builtin, argument: str | None, config: VerifierSettings) -> Verifier:
    factory = load(builtin.factory) if isinstance(builtin.factory, str) else builtin.factory
    return factory(argument, config)


def check_verifier_name(name: str, config: VerifierSettings) -> None:
    """Raises ValueError unless `name` names a verifier; a built-in taking an argument is built, so that its
    factory checks the argument (numeric needs an absolute tolerance >= 0); an import path is imported
    (ImportError, AttributeError), so that one that cannot be fails before any data moves."""
    builtin = _builtin(name)
    if builtin is not None:
        entry, argument = builtin
        if argument is not None:
            _build(entry, argument, config)
        return
    if not IMPORT_PATH.fullmatch(name):
        raise ValueError(f"unknown verifier {name!r}: use {verifier_names()} or package.module:function")
    load(name)


def _takes_question(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function: called the old way
        return False
    return "question" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def verdict_judge(judge, rule: str):
    """`judge` as (gold, response, timeout_s, question) -> Verdict: the question passed only to a judge
    that takes one; a judge returning (score, status, answer) gets `rule` as its verifier_rule."""
    takes_question = _takes_question(judge)

    def run(gold, response: str, timeout_s: int, question: str | None) -> Verdict:
        result = judge(gold, response, timeout_s, question=question) if takes_question else judge(gold, response, timeout_s)
        score, status, answer, *decided = result
        decided_by = decided[0] if decided else rule
        return Verdict(score, status, answer, decided_by if status in VERDICT_STATUSES else None)

    return run


def _as_given(reference: str, timeout_s: int) -> str:
    return reference


def make_verifier(name: str, config: VerifierSettings) -> Verifier:
    """The verifier `name` names (a built-in, or a plug-in by import path, which gets the reference as given),
    guarded: a reference that fails to prepare is None (bad_reference), a judge timing out (math-verify's
    signal-alarm TimeoutException) is a "timeout" verdict, any other exception an "error" verdict."""
    from math_verify.errors import TimeoutException  # a BaseException: caught by name

    builtin = _builtin(name)
    if builtin is not None:
        prepare, judge = _build(*builtin, config)
    else:
        prepare, judge = _as_given, load(name)
    judge = verdict_judge(judge, name)

    def guarded_prepare(reference: str, timeout_s: int):
        try:
            return prepare(reference, timeout_s)
        except (Exception, TimeoutException):  # noqa: BLE001 - an unparseable reference is a data problem, per row
            return None

    def guarded_judge(gold, response: str, timeout_s: int, question: str | None) -> Verdict:
        try:
            return judge(gold, response, timeout_s, question)
        except TimeoutException:
            return Verdict(None, VerifierStatus.TIMEOUT, None, None)
        except Exception as exc:  # noqa: BLE001 - a verifier failing on one row is that row's error, not the worker's
            return Verdict(None, VerifierStatus.ERROR, f"{name}: {type(exc).__name__}: {exc}"[:MAX_EXTRACTED_CHARS], None)

    return Verifier(guarded_prepare, guarded_judge)
