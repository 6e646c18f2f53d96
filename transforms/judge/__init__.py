"""A small judge model as a fallback verifier: its settings, which rows reach it, its backends by name, and
what its verdicts change.

The rules (transforms/verify) decide first. The judge is asked only about rows they rejected with status ok
and an answer extracted (`gated_rows`): never a row a `refused:` rule rejected (a deliberate precision
refusal is not the judge's to undo), never one whose answer and gold are both plain numbers (a numeric
mismatch is not a notation problem). It sees the question, the gold and the extracted final answer, quoted
(templates.py), never the whole response.

Modes: `report` (the default) adds the column fallback_verdict and changes nothing else; `addon` also turns
the rule's 0 into 1 where the judge says correct, with verifier_rule "model:<judge name>", so every fusion
sees it. invalid and unparsed never become a 0 or a 1: the rule's verdict stands.

Backends (`JUDGE_BACKENDS`, a lazy table of "module:Class" paths like the reward backends'): "transformers"
(greedy generate with torch) and "vllm" (vLLM's generate runner), in backends.py; a plug-in is
`register_judge_backend(NAME, "module:Class")` or an import path given as --fallback-backend.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import FALLBACK_FIELDS, FallbackVerdict, VerifierStatus
from transforms.checks import NEVER, STORED, is_whole, option
from transforms.judge.templates import BUILTIN_TEMPLATES, Template, load_template

MODES = ("report", "addon")
DTYPES = ("auto", "float32", "bfloat16", "float16")
REFUSED = "refused:"
MODEL_RULE = "model:"  # verifier_rule of a row the judge turned correct (addon): "model:<judge name>"
# Judges whose published licence forbids commercial use or derivatives: a warning names the licence.
RESTRICTED_LICENCES = {"xverify": "xVerify's published licence forbids commercial use and derivatives"}
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?%?")

JUDGE_BACKENDS: dict[str, object] = {
    "transformers": "transforms.judge.backends:TransformersJudge",
    "vllm": "transforms.judge.backends:VllmJudge",
}
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def register_judge_backend(name: str, backend) -> None:
    """Adds a judge backend under `name`: a JudgeBackend subclass or its "module:Class" path. Worker processes
    of a cluster see only what they import: there, give the backend by its import path instead."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ValueError(f"a judge backend name is lower-case letters, digits, '-' and '_', got {name!r}")
    JUDGE_BACKENDS[name] = backend


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of the fallback judge (all off unless model is set).

    model: a local directory or a hub id of a causal LM; resolved on the driver before any data moves (a hub
    id to the commit every worker then loads), loaded on a worker when its first gated row arrives.
    template: tinyv, general-verifier, compass (templates.py) or a Jinja file with `parse`.
    max_new_tokens: the reply's budget (None: the template's own: 4 for a True/False or a letter, 512 for a
    judge that reasons first, 256 for a FILE template).
    max_length: prompt + reply tokens at most; a longer prompt is not sent (its verdict: unparsed).
    batch_size: prompts per generate call (transformers; vLLM schedules its own batches).
    gpu_memory_utilization: vLLM's share of the GPU for the judge; with a vLLM reward model on the same
    worker the two shares must add up to at most 1.
    cache_dir: where the judge's verdicts are cached (pipeline/stages/fallback.py), from --cache-dir.
    """

    model: str | None = option(
        "a small judge model (local directory or hub id) asked about rows the rules rejected; see README: "
        "Fallback judge", name="fallback_verifier", group="fallback judge", default=None)
    revision: str | None = option(
        "the judge's hub revision (branch, tag or commit)", name="fallback_revision", group="fallback judge",
        default=None)
    backend: str = option(
        "`transformers` or `vllm`, or a `package.module:Class` judge backend", name="fallback_backend",
        group="fallback judge", default="transformers")
    template: str = option(
        "the judge's prompt and parser: `tinyv`, `general-verifier`, `compass`, or a Jinja template file over "
        "question, gold and answer (with --fallback-parse)", name="fallback_template", group="fallback judge",
        default="tinyv")
    parse: str | None = option(
        "the reply's parser: a regular expression with named groups `correct`, `incorrect` and optionally "
        "`invalid` (the last match counts)", name="fallback_parse", group="fallback judge",
        default_text="the template's", default=None)
    mode: str = option(
        "`report`: the fallback_verdict column only; `addon`: a judge `correct` also turns a rule 0 into 1 "
        "(verifier_rule model:NAME) for every fusion", name="fallback_mode", group="fallback judge",
        choices=MODES, default="report")
    max_new_tokens: int | None = option(
        "the judge's reply budget in tokens", name="fallback_max_new_tokens", group="fallback judge",
        default_text="the template's", default=None)
    max_length: int = option(
        "prompt + reply tokens at most (a longer prompt is not sent: verdict unparsed)",
        name="fallback_max_length", group="fallback judge", default=4096)
    dtype: str = option(
        "the judge's weights (auto: bfloat16 on GPU, float32 on CPU)", name="fallback_dtype",
        group="fallback judge", choices=DTYPES, default="auto")
    batch_size: int = option(
        "prompts per generate call (transformers backend)", name="fallback_batch_size", group="fallback judge",
        default=16, stored=NEVER)
    gpu_memory_utilization: float = option(
        "vLLM's share of a GPU worker's memory for the judge", name="fallback_gpu_memory_utilization",
        group="fallback judge", default=0.3, stored=NEVER)
    cache_dir: str | None = field(default=None, metadata={STORED: NEVER})  # --cache-dir, set by the pipeline config

    def __post_init__(self):
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"fallback.model must be a local directory or a hub id, got {self.model!r}")
        if self.mode not in MODES:
            raise ValueError(f"fallback.mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"fallback.dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name, minimum in (("max_length", 16), ("batch_size", 1)):
            if not is_whole(getattr(self, name), minimum):
                raise ValueError(f"fallback.{name} must be an integer >= {minimum}, got {getattr(self, name)!r}")
        if self.max_new_tokens is not None and not is_whole(self.max_new_tokens, 1):
            raise ValueError(f"fallback.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"fallback.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.backend not in JUDGE_BACKENDS and not IMPORT_PATH.fullmatch(str(self.backend)):
            raise ValueError(f"fallback.backend must be one of {tuple(JUDGE_BACKENDS)} or a 'package.module:Class' "
                             f"import path, got {self.backend!r}")
        if self.enabled:
            self.load_template()  # a missing file or a bad parser fails here, before any data moves
            if self.load_template().max_new_tokens >= self.max_length:
                raise ValueError(f"fallback.max_length ({self.max_length}) must exceed the reply budget "
                                 f"({self.load_template().max_new_tokens} tokens)")

    @property
    def enabled(self) -> bool:
        return self.model is not None

    @property
    def judge_name(self) -> str:
        """The judge as verifier_rule names it: a hub id as given, a local directory by its last part."""
        return self.model.rstrip("/").rsplit("/", 1)[-1] if self.model.startswith((".", "/", "~")) else self.model

    def load_template(self) -> Template:
        return load_template(self.template, self.parse, self.max_new_tokens)

    def licence_warning(self) -> str | None:
        """A warning when the judge's published licence restricts its use (None otherwise)."""
        name = (self.model or "").lower()
        for marker, licence in RESTRICTED_LICENCES.items():
            if marker in name:
                return (f"--fallback-verifier {self.model}: {licence}; check that your use of its verdicts is "
                        "allowed")
        return None


class JudgeBackend:
    """What a judge backend provides; the fallback stage calls, in order:

    - `identity()` on the driver, before any data moves: resolves the model (a hub id to its commit, a local
      directory to a full-content fingerprint); stored in every shard's metadata and in the cache key;
    - `load()` on a worker, when its first gated row arrives (device and dtype resolved there);
    - `cache_identity()` on a worker with --cache-dir: identity plus what is resolved where it runs (dtype);
    - `generate(prompts, template)`: one greedy reply per prompt, at most template.max_new_tokens tokens
      (text; None where a prompt could not be sent, e.g. longer than max_length);
    - `close()` when the worker is done.
    `needs_accelerator` places the stage on GPU workers.
    """

    needs_accelerator = True

    def __init__(self, config: JudgeConfig):
        self.config = config

    def identity(self) -> dict:
        return {"backend": self.config.backend, "name": self.config.model}

    def cache_identity(self) -> dict:
        """Everything a cached verdict depends on of the backend and model (where it runs: the dtype)."""
        return self.identity()

    def load(self) -> None:
        """Nothing to load by default."""

    def generate(self, prompts: list[str], template: Template) -> list[str | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""


def judge_backend(config: JudgeConfig) -> JudgeBackend:
    """The backend `config.backend` names (a registered name or an import path), constructed."""
    entry = JUDGE_BACKENDS.get(config.backend, config.backend)
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"fallback.backend {config.backend!r} cannot be imported ({type(exc).__name__}: "
                             f"{exc})") from exc
    if not (isinstance(entry, type) and issubclass(entry, JudgeBackend)):
        raise ValueError(f"fallback.backend {config.backend!r} is not a JudgeBackend subclass")
    return entry(config)


def is_plain_number(text: str | None) -> bool:
    """"42", "-3.5", "1,000", "$12$", "50%": a number and nothing else (no fraction, unit or expression)."""
    if not isinstance(text, str):
        return False
    return bool(_PLAIN_NUMBER.fullmatch(text.replace(",", "").replace("$", "").replace(" ", "")))


def gated_rows(table: pa.Table, gold_column: str = "reference") -> np.ndarray:
    """Which rows of a verified table the judge is asked about (see the module docstring)."""
    n = table.num_rows
    if not n:
        return np.zeros(0, dtype=bool)
    rejected = pc.and_(pc.equal(table.column("verifier_status"), VerifierStatus.OK),
                       pc.equal(table.column("verifier_score"), 0.0))
    candidates = np.flatnonzero(pc.fill_null(rejected, False).to_numpy(zero_copy_only=False))
    gate = np.zeros(n, dtype=bool)
    if not len(candidates):
        return gate
    take = pa.array(candidates, pa.int64())
    answers = table.column("extracted_answer").take(take).to_pylist()
    rules = table.column("verifier_rule").take(take).to_pylist()
    golds = table.column(gold_column).take(take).to_pylist()
    for row, answer, rule, gold in zip(candidates, answers, rules, golds):
        gate[row] = (isinstance(answer, str) and bool(answer.strip()) and isinstance(gold, str) and bool(gold.strip())
                     and not (rule or "").startswith(REFUSED)
                     and not (is_plain_number(answer) and is_plain_number(gold)))
    return gate


def apply_verdicts(table: pa.Table, verdicts: list[str | None], config: JudgeConfig) -> pa.Table:
    """Appends fallback_verdict; in addon mode also turns each rule 0 the judge calls correct into 1 with
    verifier_rule "model:<judge name>". The only change a verdict makes to the rule columns."""
    column = pa.array(verdicts, pa.string())
    if config.mode == "addon":
        flipped = pc.fill_null(pc.equal(column, FallbackVerdict.CORRECT), False)
        if pc.any(flipped).as_py():
            scores = pc.if_else(flipped, pa.scalar(1.0, pa.float32()), table.column("verifier_score"))
            rules = pc.if_else(flipped, pa.scalar(MODEL_RULE + config.judge_name), table.column("verifier_rule"))
            for name, values in (("verifier_score", scores), ("verifier_rule", rules)):
                index = table.column_names.index(name)
                table = table.set_column(index, table.schema.field(name), values)
    return table.append_column(FALLBACK_FIELDS[0], column)


__all__ = ["BUILTIN_TEMPLATES", "JUDGE_BACKENDS", "JudgeBackend", "JudgeConfig", "MODES", "apply_verdicts",
           "gated_rows", "is_plain_number", "judge_backend", "register_judge_backend"]
