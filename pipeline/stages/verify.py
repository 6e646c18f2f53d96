"""The verify stage: verdicts from a pool of verifier processes owned by the stage (set up once per worker),
the verdict cache first when --cache-dir is set."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from pipeline.storage.content_cache import ContentCache, locality_of
from pipeline.storage.faults import fault_point
from pipeline.storage.verdict_cache import VERDICT_VALUES, cacheable_verdicts, verdict_cache, verdict_keys
from pipeline.stages.base import MetricsSink, Resources, WorkerContext, timed
from transforms.verify import VerifierConfig, VerifierPool, usable_cores, verify_table


class VerifyStage:
    """math-verify verdicts for a batch, from a pool of worker processes owned by this stage.

    Throughput: about 300-900 rows/s per verifier process on real GSM8K/MATH outputs; a verdict-cache hit
    costs a key hash and a lookup (about 1M rows/s). Counters: "verified" (rows judged), "verifier_cached"
    (rows read from the cache).
    """

    name = "verify"
    resources = Resources(accelerator=False)

    def __init__(self, config: VerifierConfig):
        self.config = config
        self.pool: VerifierPool | None = None
        self.cache: ContentCache | None = None

    def setup(self, context: WorkerContext) -> None:
        self.pool = VerifierPool(self.config, self.config.resolved_workers(context.host_processes(usable_cores())))
        self._lock = threading.Lock()
        if self.config.cache_dir:
            # The pool's processes start at the first row the cache misses: a night whose rows are all
            # cached starts none (about 85 MB of memory each, and a second of start-up).
            self.cache = verdict_cache(self.config.cache_dir, self.config)
        else:
            self.pool.start()

    def _verify(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        restarts = self.pool.restarts
        labelled = verify_table(table, self.pool)
        restarted = self.pool.restarts - restarts
        if restarted:
            sink.count("verifier_worker_restarts", restarted)
        sink.count("verified", table.num_rows)
        return labelled

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        if self.pool is None:
            raise RuntimeError("VerifyStage.setup() must run before process()")
        # One call at a time (the pool serializes them anyway), so the restart count is this call's own.
        fault_point("verify")
        with self._lock, timed(sink, "verify"):
            if self.cache is None:
                return self._verify(table, sink)
            keys = verdict_keys(table, self.config)
            locality = locality_of(table)
            reads = self.cache.objects_read
            hit, cached = self.cache.lookup(keys, locality)
            sink.count("verifier_cached", int(hit.sum()))
            sink.count("cache_objects_read", self.cache.objects_read - reads)
            missed = np.flatnonzero(~hit)
            if not len(missed):
                return _with_verdicts(table, cached)
            fresh = self._verify(table.take(missed), sink).select(VERDICT_VALUES.names)
            keep = cacheable_verdicts(fresh)
            sink.count("cache_rows_stored", self.cache.store(keys[missed][keep], fresh.filter(pa.array(keep)), locality))
            # Rows back in input order: the cached ones, then the fresh ones, put where they came from.
            order = np.argsort(np.concatenate([np.flatnonzero(hit), missed]), kind="stable")
            return _with_verdicts(table, pa.concat_tables([cached, fresh]).take(pa.array(order, pa.int64())))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _with_verdicts(table: pa.Table, verdicts: pa.Table) -> pa.Table:
    for name in VERDICT_VALUES.names:
        table = table.append_column(VERDICT_VALUES.field(name), verdicts.column(name))
    return table
