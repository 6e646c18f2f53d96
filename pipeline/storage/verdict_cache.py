"""The verdict cache under --cache-dir: a namespace of the content cache (content_cache.py) per verifier and
settings, so a nightly relabel verifies only the rows it has not seen.

The namespace is a hash of everything a verdict depends on besides the row: the source of the built-in
verifiers (every module of transforms/verify: its rules and answer tables change without a package version),
the versions of math-verify, latex2sympy2_extended and sympy, the verifier settings (timeouts, judge, which
verifier judges which data_source), and the source of every plug-in verifier the settings name by import
path (a changed plug-in is a new namespace). The key is a hash of the row's verifier (by its data_source),
its question, its reference and its response; the question is in every key, also for verifiers that do not
read it (the same answer to another question is a miss, never a wrong verdict).

Values: verifier_score, verifier_status, extracted_answer, verifier_rule. Verdicts (status ok or no_answer)
and rows without a reference are cached; timeouts, errors and bad references (a reference whose parse timed
out is one) are not: they may pass next time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.storage.content_cache import ContentCache, content_keys
from schemas.rollouts import (DATA_SOURCE, PROMPT, REFERENCE, RESPONSE, VERDICT_STATUSES, VERIFIER_FIELDS,
                             VerifierStatus)
from transforms.verify import VerifierConfig, question_texts
from transforms.verify.registry import ALIASES, DEFAULT_VERIFIER, IMPORT_PATH, VERIFIERS

VERDICT_VALUES = pa.schema(VERIFIER_FIELDS)
CACHED_STATUSES = (*VERDICT_STATUSES, VerifierStatus.NO_REFERENCE)
LIBRARIES = ("math-verify", "latex2sympy2_extended", "sympy")
_BUILTIN_SOURCE = Path(importlib.util.find_spec("transforms.verify").origin).parent


def _source_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _plugin_modules(config: VerifierConfig) -> list[str]:
    """The modules of the import-path verifiers and judge the settings name (built-ins excluded)."""
    builtin_factories = {b.factory for b in VERIFIERS.values() if isinstance(b.factory, str)}
    paths = [config.judge, *config.source_verifiers().values()]
    modules = set()
    for path in paths:
        path = ALIASES.get(path, path)
        if IMPORT_PATH.fullmatch(path) and path not in builtin_factories and not path.startswith("transforms.verify."):
            modules.add(path.split(":")[0])
    return sorted(modules)


def verifier_identity(config: VerifierConfig) -> dict:
    """What every cached verdict of `config` depends on besides its row (see the module docstring)."""
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = None
    plugins = {}
    for module in _plugin_modules(config):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ValueError(f"verifier plug-in {module!r} has no source file to key the verdict cache by")
        plugins[module] = _source_digest([Path(spec.origin)])
    return {
        "cache": "verdicts",
        "builtin_source_sha256": _source_digest(_BUILTIN_SOURCE.glob("*.py")),
        "libraries": versions,
        "settings": {"timeout_s": config.timeout_s, "hard_timeout_s": config.hard_timeout_s,
                     "judge": config.judge, "sources": config.source_verifiers()},
        "plugins": plugins,
    }


def verdict_keys(table: pa.Table, config: VerifierConfig) -> np.ndarray:
    """The content key of each row: its verifier (by data_source), question, reference, response."""
    mapping = config.source_verifiers()
    sources = table.column(DATA_SOURCE).to_pylist() if DATA_SOURCE in table.column_names else [None] * table.num_rows
    verifiers = [mapping.get(source, DEFAULT_VERIFIER) if mapping else DEFAULT_VERIFIER for source in sources]
    questions = question_texts(table.column(PROMPT).to_pylist()) if PROMPT in table.column_names else \
        [None] * table.num_rows
    references = [r.strip() if isinstance(r, str) else None for r in table.column(REFERENCE).to_pylist()]
    return content_keys(verifiers, questions, references, table.column(RESPONSE).to_pylist())


def verdict_cache(root: str, config: VerifierConfig) -> ContentCache:
    return ContentCache(root, verifier_identity(config), VERDICT_VALUES)


def cacheable_verdicts(verdicts: pa.Table) -> np.ndarray:
    """Which verdict rows the cache keeps: status ok, no_answer or no_reference."""
    statuses = verdicts.column("verifier_status").to_pylist()
    return np.array([status in CACHED_STATUSES for status in statuses], dtype=bool)
