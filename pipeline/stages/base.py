"""The stage contract every engine calls: Stage, Resources, WorkerContext, metrics, one shared set-up per worker.

A stage is set up once per worker process, processes one Arrow table at a time, and is closed when the
worker is done:

    stage.setup(context)                 # make the verifier pool, load the reward model, ...
    table = stage.process(table, sink)   # one batch in, the same rows with columns added out
    stage.close()

`resources` says what a stage needs so an engine can place it (a Dask worker resource, a Beam
accelerator hint); the engine decides where, the stage never asks. Counters and busy time go to a
`MetricsSink` passed in by the engine (Beam metrics, a per-task dict on Dask), never module globals.

The row stages are pipeline/stages/verify.py and score.py; the plan holds them in order
(pipeline/plan.py) and every engine runs that list over units of work (pipeline/stages/unit.py). Pure
steps (read, validate, bucket, fuse, write) have no set-up and are plain functions beside them.
"""

from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import pyarrow as pa


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


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (other C libraries return freed memory by their own rules). Looked up
    once per process: ctypes.util.find_library runs `ldconfig -p` in a subprocess."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def release_memory() -> None:
    """Hands a finished bucket's or unit's freed memory back to the system: worker processes (and Beam's
    in-process runner) run task after task, and would otherwise keep the largest one's high-water mark in
    Arrow's pool and the C heap (at 10M rows the local driver held 530 MB after fusion instead of 360 MB)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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


class PlanView(Protocol):
    """What the stages read of the run's plan (pipeline/plan.py's RunPlan, one layer up, which holds them)."""

    config: object  # PipelineConfig
    contract: object  # schemas.rollouts.InputContract
    layout: object  # schemas.layouts.Layout or None
    files: tuple
    metadata: dict
    num_shards: int
    fusion: object  # transforms.fuse.Fusion
    spill_dir: str
    output_schema: pa.Schema
    has_sample_index: bool


class Stage(Protocol):
    """A row stage: built from its config (cheap, picklable: the plan holds these specs), set up once per
    worker process by SharedStages, then `process` per batch."""

    name: str
    resources: Resources
    config: object

    def __init__(self, config) -> None: ...

    def setup(self, context: WorkerContext) -> None: ...

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table: ...

    def close(self) -> None: ...


def placement_groups(stages: Sequence[Stage]) -> list[tuple[Stage, ...]]:
    """`stages` cut into runs of consecutive stages with the same resources: each run can share a worker."""
    groups: list[tuple[Stage, ...]] = []
    for stage in stages:
        if groups and groups[-1][-1].resources == stage.resources:
            groups[-1] += (stage,)
        else:
            groups.append((stage,))
    return groups


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
        """The set-up instance for `stage` (a spec: any object with `config`, constructible from it)."""
        key = (type(stage).__name__, repr(stage.config), context)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                # A fresh instance from the spec's config: the plan's stages stay specs (picklable, not set up).
                entry = self._entries[key] = _SharedEntry(type(stage)(stage.config))
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
