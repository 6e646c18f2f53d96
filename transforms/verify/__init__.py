"""Verification: the verifier stage's settings, the verifiers by name, and the table it labels.

The verifiers are registry.VERIFIERS (built-ins: "math", the default, in math.py; "exact", "numeric:TOL"
and "choice" in simple.py) or plug-ins by import path, both resolved by make_verifier; the process pool
(pool.py) runs them with hard time limits and knows none of them. Importing this package loads no
verifier (and no math-verify): a verifier is loaded where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas.rollouts import DATA_SOURCE, PROMPT, REFERENCE, RESPONSE, VERIFIER_FIELDS
from transforms.checks import ALWAYS, NEVER, STORED, is_finite_number, is_whole, option
from transforms.verify.pool import VerifierPool, Verdicts, usable_cores
from transforms.verify.registry import (IMPORT_PATH, VERIFIERS, Builtin, Verdict, Verifier, check_verifier_name,
                                        make_verifier, sources_help)

__all__ = ["VERIFIERS", "Builtin", "Verdict", "Verdicts", "Verifier", "VerifierConfig", "VerifierPool",
           "check_verifier_name", "make_verifier", "question_texts", "sources_help", "usable_cores", "verify_table"]

# The question a verifier sees: the prompt's text (a chat's last user message), its last characters only
# (a few-shot prompt ends with the question asked).
QUESTION_MAX_CHARS = 8000


@dataclass(frozen=True)
class VerifierConfig:
    """Settings of the verifier stage.

    num_workers: worker processes (None = resolved where the stage runs: that host's cores divided by
    the engine's worker processes there; 0 = run in the calling thread, which must be a main thread, so
    only for direct use of the pool, never in a pipeline run).
    timeout_s: math-verify's own per-parse / per-comparison timeout; whole seconds (it uses signal.alarm).
    hard_timeout_s: wall-clock limit per response, enforced by killing the worker.
    task_size: responses sent to a worker per message; larger amortizes IPC, smaller balances load.
    judge: "module:function" judging one response for the "math" verifier, (gold, response, timeout_s[,
    question=...]) -> (score, status, answer[, rule]); the default names transforms.verify.math's
    judge_response by a stable alias (registry.ALIASES: the name is stored in every shard's settings, and no
    module of that old name exists). Loaded by name, through the plug-in door, where the verifiers run.
    sources: which verifier judges which data_source, "SOURCE=VERIFIER,..." (others use "math"): a
    built-in of VERIFIERS ("math"; "exact", string equality of the final answer; "numeric:TOL", absolute
    tolerance TOL; "choice", the multiple-choice letter), or "package.module:function" taking (reference,
    response, timeout_s) -> (score, status, extracted), and the row's question too when it has a
    `question` parameter. Its verifier_rule is its name.
    cache_dir: the verdict cache (pipeline/storage/verdict_cache.py), from --cache-dir; not an option of its own.
    """

    num_workers: int | None = option(
        "math-verify processes per engine worker process",
        name="verifier_workers", group="verifier", default_text="host cores ÷ engine processes", default=None,
        stored=NEVER)
    timeout_s: int = option(
        "math-verify's own timeout, whole seconds (it uses `signal.alarm`)",
        name="verifier_timeout", group="verifier", default=5, stored=ALWAYS)
    hard_timeout_s: float = option(
        "seconds per response before its verifier process is killed and replaced",
        name="verifier_hard_timeout", group="verifier", default=30.0, stored=ALWAYS)
    task_size: int = option(
        "responses per message to a verifier process",
        name="verifier_task_size", group="verifier", default=32, stored=NEVER)
    judge: str = field(default="transforms.verifier:judge_response", metadata={STORED: ALWAYS})  # not an option
    sources: str = option(
        sources_help(),
        name="verifier_sources", group="verifier", default="", stored=ALWAYS)
    cache_dir: str | None = field(default=None, metadata={STORED: NEVER})  # --cache-dir, set by the pipeline config

    def __post_init__(self):
        if self.num_workers is not None and not is_whole(self.num_workers, 0):
            raise ValueError(f"verifier.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not is_whole(self.timeout_s, 1):
            raise ValueError(
                f"verifier.timeout_s must be a whole number of seconds >= 1 (math-verify uses signal.alarm), "
                f"got {self.timeout_s!r}"
            )
        if not is_finite_number(self.hard_timeout_s) or self.hard_timeout_s <= self.timeout_s:
            raise ValueError(
                f"verifier.hard_timeout_s must be a number greater than timeout_s ({self.timeout_s}), "
                f"got {self.hard_timeout_s!r}"
            )
        if not is_whole(self.task_size, 1):
            raise ValueError(f"verifier.task_size must be an integer >= 1, got {self.task_size!r}")
        if not isinstance(self.judge, str) or not IMPORT_PATH.fullmatch(self.judge):
            raise ValueError(f"verifier.judge must look like 'package.module:function', got {self.judge!r}")
        if isinstance(self.sources, dict):  # YAML mapping form
            object.__setattr__(self, "sources", ",".join(f"{k}={v}" for k, v in self.sources.items()))
        if not isinstance(self.sources, str):
            raise ValueError(f"verifier.sources must look like 'SOURCE=VERIFIER,...', got {self.sources!r}")
        try:
            for verifier in self.source_verifiers().values():
                check_verifier_name(verifier, self)  # one that cannot be imported fails before any data moves
        except (ValueError, ImportError, AttributeError) as exc:
            raise ValueError(f"verifier.sources: {exc}") from None

    def source_verifiers(self) -> dict[str, str]:
        """data_source -> verifier name, from `sources` ("gsm8k=numeric:0.01,mmlu=choice")."""
        mapping = {}
        for item in filter(None, (part.strip() for part in (self.sources or "").split(","))):
            source, sep, verifier = item.partition("=")
            if not sep or not source.strip() or not verifier.strip():
                raise ValueError(f"verifier.sources entries look like SOURCE=VERIFIER, got {item!r}")
            mapping[source.strip()] = verifier.strip()
        return mapping

    def resolved_workers(self, processes_on_host: int = 1) -> int:
        """num_workers, or (when unset) this host's usable cores divided by the engine processes on it."""
        if self.num_workers is not None:
            return self.num_workers
        return max(1, usable_cores() // max(1, processes_on_host))


def question_texts(prompts: list) -> list[str | None]:
    """The question of each prompt: its text, or a chat's last user message (its last characters)."""
    questions = []
    for prompt in prompts:
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            prompt = users[-1] if users else None
        questions.append(prompt[-QUESTION_MAX_CHARS:] if isinstance(prompt, str) else None)
    return questions


def verify_table(table: pa.Table, pool: VerifierPool) -> pa.Table:
    """Appends verifier_score, verifier_status, extracted_answer and verifier_rule to a table of rollouts."""
    references = table.column(REFERENCE).to_pylist()
    responses = table.column(RESPONSE).to_pylist()
    sources = table.column(DATA_SOURCE).to_pylist() if DATA_SOURCE in table.column_names else None
    questions = question_texts(table.column(PROMPT).to_pylist()) if PROMPT in table.column_names else None
    scores, statuses, extracted, rules = pool.verify(references, responses, sources, questions)
    columns = [
        pa.array(np.array([np.nan if s is None else s for s in scores], dtype=np.float32),
                 mask=np.array([s is None for s in scores], dtype=bool)),
        pa.array(statuses, pa.string()),
        pa.array(extracted, pa.string()),
        pa.array(rules, pa.string()),
    ]
    for f, column in zip(VERIFIER_FIELDS, columns):
        table = table.append_column(f, column)
    return table
