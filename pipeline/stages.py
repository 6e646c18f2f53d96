"""The stage contract both engines call, and the two stages that hold worker resources.

A stage is set up once per worker process, processes one Arrow table at a time, and is closed when the
worker is done:

    stage.setup(context)                 # start verifier processes, load the reward model, ...
    table = stage.process(table, sink)   # one batch in, the same rows with columns added out
    stage.close()

`resources` says what a stage needs so an engine can place it (a Dask worker resource, a Beam
accelerator hint); the engine decides where, the stage never asks. Counters and busy time go to a
`MetricsSink` passed in by the engine (Beam metrics, a per-task dict on Dask), never module globals.

Pure steps (validate, bucket, fuse, write) have no set-up and are plain functions elsewhere in
pipeline/ and transforms/.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import pyarrow as pa

from pipeline import checkpoints
from pipeline.score_cache import ScoreCache, rollout_keys
from schemas.rollouts import PROMPT, RESPONSE
from transforms.reward_models import RewardBackend, RewardModelConfig, make_reward_model, rm_columns
from transforms.verifier import VerifierConfig, VerifierPool, usable_cores, verify_table


class MetricsSink(Protocol):
    """Where stages report progress: row counts by name and busy milliseconds by stage ("<stage>_ms")."""

    def count(self, name: str, n: int) -> None: ...


@contextmanager
def timed(sink: MetricsSink, stage: str):
    """Adds the wall time of the block, in whole milliseconds, to counter "<stage>_ms"."""
    started = time.perf_counter()
    try:
        yield
    finally:
        sink.count(f"{stage}_ms", int(1000 * (time.perf_counter() - started)))


class CounterSink:
    """A MetricsSink that adds into a dict (thread-safe); engines merge and forward its `counts`."""

    def __init__(self, forward: Callable[[str, int], None] | None = None):
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._forward = forward

    def count(self, name: str, n: int) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
        if self._forward is not None:
            self._forward(name, n)


@dataclass(frozen=True)
class Resources:
    """What a stage needs from the worker it runs on. accelerator: place it on GPU workers."""

    accelerator: bool = False


@dataclass(frozen=True)
class WorkerContext:
    """Facts about the worker a stage is set up on, supplied by the engine.

    processes_on_host: how many engine worker processes share this host (machine-dependent defaults
    such as the number of verifier processes are divided by it); ONE_PER_CORE when the runner starts
    one process per core (Dataflow's default SDK containers).
    """

    processes_on_host: int = 1

    ONE_PER_CORE = 0

    def host_processes(self, cores: int) -> int:
        return cores if self.processes_on_host == self.ONE_PER_CORE else self.processes_on_host


class Stage(Protocol):
    name: str
    resources: Resources

    def setup(self, context: WorkerContext) -> None: ...

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table: ...

    def close(self) -> None: ...


class VerifyStage:
    """math-verify verdicts for a batch, from a pool of worker processes owned by this stage.

    Throughput: about 300-900 rows/s per verifier process on real GSM8K/MATH outputs.
    """

    name = "verify"
    resources = Resources(accelerator=False)

    def __init__(self, config: VerifierConfig):
        self.config = config
        self.pool: VerifierPool | None = None

    def setup(self, context: WorkerContext) -> None:
        self.pool = VerifierPool(self.config, self.config.resolved_workers(context.host_processes(usable_cores())))
        self.pool.start()
        self._lock = threading.Lock()

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        if self.pool is None:
            raise RuntimeError("VerifyStage.setup() must run before process()")
        # One call at a time (the pool serializes them anyway), so the restart count is this call's own.
        checkpoints.fault_point("verify")
        with self._lock, timed(sink, "verify"):
            restarts = self.pool.restarts
            labelled = verify_table(table, self.pool)
            restarted = self.pool.restarts - restarts
        if restarted:
            sink.count("verifier_worker_restarts", restarted)
        sink.count("verified", table.num_rows)
        return labelled

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


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
        self._lock = threading.Lock()

    def setup(self, context: WorkerContext) -> None:
        self.backend.load()
        if self.config.cache_dir:
            self.cache = ScoreCache(self.config.cache_dir, self.backend.cache_identity())

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        if self.backend is None:
            raise RuntimeError("ScoreStage was closed")
        checkpoints.fault_point("score")
        with self._lock:  # one forward pass at a time on a model shared by a worker's threads
            with timed(sink, "score"):
                scored = self._score(table, sink) if self.cache is not None else self.backend.score_table(table)
        if self.cache is None and hasattr(self.backend, "cache_identity"):  # a backend that runs a model
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
        close = getattr(self.backend, "close", None)
        if close is not None:  # a backend with engine processes (vllm) stops them
            close()
        self.backend = None  # drops the loaded model; this instance cannot score again


class SharedStages:
    """One set-up instance of each stage per worker process, shared by the engine's threads.

    acquire() sets a stage up on first use (the verifier pool starts, the model loads) and counts its
    users; release() closes it when the last one leaves (Beam: DoFn teardown). Dask tasks only acquire;
    the Dask engine calls close_all() on every worker when a job ends. Keys are the stage class, its
    config and the worker context, so two jobs with different settings in one process never share.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[tuple, _SharedEntry] = {}

    def acquire(self, stage: Stage, context: WorkerContext) -> Stage:
        key = (type(stage).__name__, repr(stage.config), context)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _SharedEntry(stage)
            entry.users += 1
        # Set-up (a model load takes seconds) holds only this entry's lock, not the registry's.
        with entry.lock:
            if not entry.ready and self._entries.get(key) is not entry:  # another user's set-up failed
                return self.acquire(stage, context)
            if not entry.ready:
                try:
                    entry.stage.setup(context)
                except BaseException:
                    with self._lock:
                        entry.users -= 1
                        if self._entries.get(key) is entry:
                            del self._entries[key]  # the next acquire tries again
                    raise
                entry.ready = True
        return entry.stage

    def release(self, stage: Stage) -> None:
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.stage is stage:
                    entry.users -= 1
                    if entry.users == 0:
                        del self._entries[key]
                        stage.close()
                    return

    def close_all(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            entry.stage.close()


class _SharedEntry:
    def __init__(self, stage: Stage):
        self.stage = stage
        self.users = 0
        self.ready = False
        self.lock = threading.Lock()


# One registry per worker process (Beam SDK worker, Dask worker, or the driver for local runs).
WORKER_STAGES = SharedStages()


class VerifyAhead:
    """Bounded look-ahead that overlaps verification with scoring inside one worker.

    push(key, table) starts verifying `table` on a background thread and returns the (key, verified
    table) pairs whose verification finished, oldest first, keeping at most `depth` batches in flight:
    while the caller scores batch k, batch k+1 (up to k+depth) is being verified by the verifier
    processes. A value that is not a table (an end-of-unit marker) passes through unchanged, in order.
    depth=0 verifies synchronously (overlap off). Time the caller spends blocked waiting for a verified
    batch is counted as "score_wait_ms": the part of verification the scorer could not hide (on Beam,
    where verify and score are fused locally, it is the scorer's wait; inside a Dask verify task it is
    only the task's own wait, the scorer being a separate task).
    The background thread reports nothing itself: its counts reach `sink` on the caller's thread when
    the batch is handed over (Beam drops metric updates made outside a bundle's thread).
    Memory: at most depth + 1 batches held.
    """

    def __init__(self, stage: VerifyStage, depth: int):
        self.stage = stage
        self.depth = depth
        self._pending: deque[tuple[object, Future]] = deque()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="herolabel-verify") if depth else None

    def push(self, key, value, sink: MetricsSink) -> Iterator[tuple[object, object]]:
        if self._executor is None:
            with timed(sink, "score_wait"):
                verified = self.stage.process(value, sink) if isinstance(value, pa.Table) else value
            yield key, verified
            return
        if isinstance(value, pa.Table):
            future = self._executor.submit(self._verify, value)
        else:
            future = Future()
            future.set_result((value, {}))
        self._pending.append((key, future))
        while len(self._pending) > self.depth:
            yield self._wait_oldest(sink)

    def _verify(self, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        counts = CounterSink()
        return self.stage.process(table, counts), counts.counts

    def drain(self, sink: MetricsSink) -> Iterator[tuple[object, object]]:
        while self._pending:
            yield self._wait_oldest(sink)

    def _wait_oldest(self, sink: MetricsSink) -> tuple[object, object]:
        key, future = self._pending.popleft()
        with timed(sink, "score_wait"):
            verified, counts = future.result()
        for name, n in counts.items():
            sink.count(name, n)
        return key, verified

    def close(self) -> None:
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


@dataclass(frozen=True)
class UnitEnd:
    """Travels behind a unit's last batch (in order, where stages are fused): the unit is complete.
    Carries where the unit's error records were spilled (None when it had none)."""

    unit: str
    file_index: int
    errors_url: str | None
