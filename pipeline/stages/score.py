"""The score stage: reward-model scores for a batch, the backends loaded once per worker, with the score cache."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pyarrow as pa

from pipeline.storage.faults import fault_point
from pipeline.storage.content_cache import ContentCache, locality_of
from pipeline.storage.score_cache import SCORE_VALUES, cacheable_scores, rollout_keys, score_cache
from pipeline.stages.base import MetricsSink, Resources, WorkerContext, timed
from schemas.rollouts import PROMPT, RESPONSE
from transforms.rm import RewardBackend, RewardModelConfig, make_reward_model, rm_columns
from transforms.rm.signals import SCORE_PREFIX, STATUS_PREFIX, SignalSet

log = logging.getLogger(__name__)


class _Signal:
    """One reward signal on this worker: its backend and its own score-cache namespace."""

    def __init__(self, name: str | None, config: RewardModelConfig):
        self.name = name
        self.config = config
        self.backend: RewardBackend = make_reward_model(config)
        self.cache: ContentCache | None = None

    def setup(self) -> None:
        self.backend.load()
        if self.config.cache_dir and self.backend.runs_model:  # without a model, --cache-dir holds verdicts only
            self.cache = score_cache(self.config.cache_dir, self.backend.cache_identity())

    def score(self, table: pa.Table, sink: MetricsSink) -> tuple[np.ndarray, list]:
        """Scores and statuses of every row (the cache first, the backend for the rest)."""
        suffix = f"__{self.name}" if self.name is not None else ""
        if self.cache is None:
            scored = self.backend.score_table(table)
            if self.backend.runs_model:
                sink.count("rm_scored", table.num_rows)
                if suffix:
                    sink.count("rm_scored" + suffix, table.num_rows)
            scores = scored.column("rm_score").to_numpy(zero_copy_only=False).astype(np.float64)
            return scores, scored.column("rm_status").to_pylist()
        keys = rollout_keys(table.column(PROMPT).to_pylist(), table.column(RESPONSE).to_pylist())
        locality = locality_of(table)
        reads = self.cache.objects_read
        hit, cached = self.cache.lookup(keys, locality)
        sink.count("cache_objects_read", self.cache.objects_read - reads)
        scores = np.full(table.num_rows, np.nan)
        statuses = np.full(table.num_rows, None, dtype=object)
        scores[hit] = cached.column("rm_score").to_numpy(zero_copy_only=False)
        statuses[hit] = cached.column("rm_status").to_pylist()
        missed = np.flatnonzero(~hit)
        if len(missed):
            fresh = self.backend.score_table(table.take(missed))
            fresh_scores = fresh.column("rm_score").to_numpy(zero_copy_only=False).astype(np.float64)
            fresh_statuses = fresh.column("rm_status").to_pylist()
            scores[missed] = fresh_scores
            statuses[missed] = fresh_statuses
            keep = cacheable_scores(fresh_scores, fresh_statuses)
            values = pa.table({"rm_score": pa.array(fresh_scores[keep].astype(np.float32), pa.float32()),
                               "rm_status": pa.array([s for s, k in zip(fresh_statuses, keep) if k], pa.string())},
                              schema=SCORE_VALUES)
            self.cache.store(keys[missed][keep], values, locality)
        for name in ("rm_cached", "rm_scored"):
            n = int(hit.sum()) if name == "rm_cached" else len(missed)
            sink.count(name, n)
            if suffix:
                sink.count(name + suffix, n)
        return scores, statuses.tolist()


class ScoreStage:
    """Reward-model scores for a batch; the backends are loaded once in setup, on the worker.

    `config` is one RewardModelConfig (the usual run: columns rm_score, rm_status) or a SignalSet of named
    signals (transforms/rm/signals.py): then every signal's rm_score__NAME / rm_status__NAME too, and
    rm_score / rm_status copy the fusion's signal. With rm.cache_dir, rows whose (model, settings, prompt,
    response) were scored before are read from that model's score cache and only the others reach the
    backend; counters rm_scored and rm_cached (and rm_scored__NAME, rm_cached__NAME) say how many.

    Several models on one device: at most `max_resident` (default: as many as the device's memory allows,
    measured after each load) stay on it; the others wait in host memory (RewardBackend.park) and are moved
    in when their turn comes, a resident one moved out first. Each batch is scored by the resident models
    first, so with two models and one resident the device switches once per batch, never reloading a model
    from disk; the switch time is counted in "rm_switch_ms".
    """

    name = "score"

    def __init__(self, config: RewardModelConfig | SignalSet):
        self.config = config
        if isinstance(config, SignalSet):
            self.signals = [_Signal(s.name, s.config) for s in config.signals]
            self.fusion = config.fusion
        else:
            self.signals = [_Signal(None, config)]
            self.fusion = None
        self.resources = Resources(accelerator=any(s.backend.needs_accelerator for s in self.signals))
        self.resident: list[_Signal] = []  # models on the device, least recently used first
        self.closed = False

    @property
    def backend(self) -> RewardBackend:
        """The backend behind rm_score (the fusion's signal)."""
        return self._fusion_signal().backend

    def _fusion_signal(self) -> _Signal:
        return next(s for s in self.signals if s.name == self.fusion)

    def setup(self, context: WorkerContext) -> None:
        self._lock = threading.Lock()  # made here: the stage travels to workers inside the plan, unpicklable locks not
        limit = self.config.max_resident if isinstance(self.config, SignalSet) else None
        for signal in self.signals:
            if not signal.backend.runs_model:
                signal.setup()
                continue
            # Room for this model: park the least recently used until the limit (or the device) allows it.
            while self.resident and ((limit is not None and len(self.resident) >= limit)
                                     or (limit is None and not self.resident[-1].backend.room_for_another())):
                self.resident.pop(0).backend.park()
            signal.setup()
            self.resident.append(signal)
        if len(self.resident) < sum(s.backend.runs_model for s in self.signals):
            log.info("reward models resident on the device: %s of %s",
                     ", ".join(s.name for s in self.resident), ", ".join(s.name for s in self.signals))

    def _bring_in(self, signal: _Signal, sink: MetricsSink) -> None:
        """Makes `signal`'s model resident, moving the least recently used one out when the device is full."""
        if signal in self.resident:
            self.resident.remove(signal)
            self.resident.append(signal)
            return
        started = time.perf_counter()
        limit = self.config.max_resident
        if self.resident and (limit is None or len(self.resident) >= limit):
            self.resident.pop(0).backend.park()
        signal.backend.unpark()
        self.resident.append(signal)
        sink.count("rm_switches", 1)
        sink.count("rm_switch_ms", int(1000 * (time.perf_counter() - started)))

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        if self.closed:
            raise RuntimeError("ScoreStage was closed")
        fault_point("score")
        with self._lock:  # one forward pass at a time on models shared by a worker's threads
            with timed(sink, "score"):
                results = {}
                # Resident models first (most recently used last, so it stays for the next batch's start).
                order = self.resident + [s for s in self.signals if s not in self.resident]
                for signal in order:
                    if signal.backend.runs_model and len(self.signals) > 1:
                        self._bring_in(signal, sink)
                    results[signal.name] = signal.score(table, sink)
        sink.count("scored", table.num_rows)
        if self.fusion is None:
            scores, statuses = results[None]
            return rm_columns(table, scores, statuses)
        scores, statuses = results[self.fusion]
        table = rm_columns(table, scores, statuses)
        for signal in self.signals:
            table = rm_columns(table, *results[signal.name], (SCORE_PREFIX + signal.name, STATUS_PREFIX + signal.name))
        return table

    def close(self) -> None:
        if not self.closed:
            for signal in self.signals:
                signal.backend.close()  # a backend with engine processes (vllm) stops them
        self.closed = True  # the loaded models are dropped with the backends; this instance cannot score again
        self.signals = []
        self.resident = []
