"""The score stage: reward-model scores for a batch, the backend loaded once per worker, with the score cache."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from pipeline.storage.faults import fault_point
from pipeline.storage.score_cache import ScoreCache, rollout_keys
from pipeline.stages.base import MetricsSink, Resources, WorkerContext, timed
from schemas.rollouts import PROMPT, RESPONSE
from transforms.rm import RewardBackend, RewardModelConfig, make_reward_model, rm_columns


class ScoreStage:
    """Reward-model scores for a batch; the backend is loaded once in setup, on the worker.

    With rm.cache_dir, rows whose (model, settings, prompt, response) were scored before are read from
    the score cache and only the others reach the backend; counters rm_scored and rm_cached say how many.
    """

    name = "score"

    def __init__(self, config: RewardModelConfig):
        self.config = config
        self.backend: RewardBackend | None = make_reward_model(config)
        self.resources = Resources(accelerator=self.backend.needs_accelerator)
        self.cache: ScoreCache | None = None

    def setup(self, context: WorkerContext) -> None:
        self._lock = threading.Lock()  # made here: the stage travels to workers inside the plan, unpicklable locks not
        self.backend.load()
        if self.config.cache_dir:
            self.cache = ScoreCache(self.config.cache_dir, self.backend.cache_identity())

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        if self.backend is None:
            raise RuntimeError("ScoreStage was closed")
        fault_point("score")
        with self._lock:  # one forward pass at a time on a model shared by a worker's threads
            with timed(sink, "score"):
                scored = self._score(table, sink) if self.cache is not None else self.backend.score_table(table)
        if self.cache is None and self.backend.runs_model:
            sink.count("rm_scored", table.num_rows)
        sink.count("scored", table.num_rows)
        return scored

    def _score(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        keys = rollout_keys(table.column(PROMPT).to_pylist(), table.column(RESPONSE).to_pylist())
        hit, scores, statuses = self.cache.lookup(keys)
        missed = np.flatnonzero(~hit)
        if len(missed):
            fresh = self.backend.score_table(table.take(missed))
            fresh_scores = fresh.column("rm_score").to_numpy(zero_copy_only=False).astype(np.float64)
            fresh_statuses = fresh.column("rm_status").to_pylist()
            scores[missed] = fresh_scores
            statuses[missed] = fresh_statuses
            self.cache.store(keys[missed], fresh_scores, fresh_statuses)
        sink.count("rm_cached", int(hit.sum()))
        sink.count("rm_scored", len(missed))
        return rm_columns(table, scores, statuses.tolist())

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()  # a backend with engine processes (vllm) stops them
        self.backend = None  # drops the loaded model; this instance cannot score again
