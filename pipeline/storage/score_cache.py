"""The reward-score cache under --cache-dir: a namespace of the content cache (content_cache.py) per reward
model and settings, for every engine.

The namespace is a hash of everything a score depends on besides the rollout: the RM's identity (hub commit
or full-content hash of local weights), backend, dtype, max length, truncation side and chat template; the
key is a hash of the rollout itself (prompt messages and response). So a changed weight file, template or
setting starts a new namespace, and a nightly job whose input grew scores only the rows it has not seen.
Values: rm_score (float32) and rm_status; rows scored with status ok or truncated are cached, errors are
retried on the next run. Caches written before the content cache's layout (scores-*.parquet files directly in
the namespace) are not read: such a cache scores its rows once more.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipeline.storage.content_cache import ContentCache, content_keys
from schemas.rollouts import SCORED_STATUSES

CACHED_STATUSES = SCORED_STATUSES
SCORE_VALUES = pa.schema([("rm_score", pa.float32()), ("rm_status", pa.string())])


def _canonical_prompt(prompt) -> str:
    """The prompt as the RM renders it: a string, or its messages' roles and contents in order."""
    if isinstance(prompt, str):
        return json.dumps(prompt, ensure_ascii=False)
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def rollout_keys(prompts: list, responses: list) -> np.ndarray:
    """16-byte content keys of (prompt as the RM renders it, response), as a numpy 'S16' array (~1M rows/s)."""
    return content_keys([_canonical_prompt(prompt) for prompt in prompts], responses)


def score_cache(root: str, identity: dict) -> ContentCache:
    """The score cache of the reward model `identity` (RewardBackend.cache_identity) under `root`."""
    return ContentCache(root, identity, SCORE_VALUES)


def cacheable_scores(scores: np.ndarray, statuses: list) -> np.ndarray:
    """Which scored rows the cache keeps: a finite score with status ok or truncated."""
    return np.array([status in CACHED_STATUSES and np.isfinite(score) for score, status in zip(scores, statuses)],
                    dtype=bool)
