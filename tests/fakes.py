"""A fake reward backend for tests: a deterministic score per rollout from a hash, no model, instant.

Registered in one line, below: importing this module (conftest.py does; so does every worker process that
unpickles a plan using it) registers "fake". It claims to run a model (runs_model), so the score stage
counts and caches its scores as it would a real one's.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from schemas.rollouts import PROMPT, RESPONSE, RmStatus
from transforms.rm import RewardBackend, register_backend, rm_columns


def fake_score(prompt, response) -> float:
    digest = hashlib.sha256(f"{prompt!r}\0{response}".encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 * 4 - 2  # in [-2, 2)


class FakeRewardModel(RewardBackend):
    runs_model = True
    loads = 0  # how many times load() ran in this process

    def load(self) -> None:
        type(self).loads += 1

    def cache_identity(self) -> dict:
        return {"backend": "fake"}

    def score_table(self, table: pa.Table) -> pa.Table:
        prompts, responses = table.column(PROMPT).to_pylist(), table.column(RESPONSE).to_pylist()
        scores = np.array([fake_score(p, r) for p, r in zip(prompts, responses)])
        return rm_columns(table, scores, [RmStatus.OK] * table.num_rows)


register_backend("fake", "fakes:FakeRewardModel")
