"""The Dask adapter (dask.distributed): the plan's units of work and stage list, submitted as futures.

Per unit of work (pipeline/stages/unit.py) one task per stage group (the plan's stages cut where their
resources change), then a spill task, each placed explicitly:
    verify-UNIT  read + validate + the CPU stages   on the workers without the RM resource while any is
                                                    alive; anywhere once none is (its chain is resubmitted)
    score-UNIT   the stages needing an accelerator  require the RM resource (default GPU=1); with a backend
                                                    that needs none, scoring joins the first task
                                                    ("verify+score")
    spill-UNIT   spill files and the unit's marker  prefers CPU workers (may run anywhere)
then one sigma-BUCKET task per bucket (the fusion's partial statistic, combined on the client), one
fuse-BUCKET task per shard and one errors-FILE task per input file with bad rows.

Scoring unit k overlaps verification of units k+1.. naturally (separate tasks on separate workers).
At most `window` units are in flight, so memory stays flat whatever the input size; only spill-file
paths come back to the client. A worker that dies loses its running tasks and the results it held,
which the scheduler recomputes; a unit's spill object is named after the unit and its content and
written atomically, so a rerun rewrites it (or, with other rows, writes another that its marker names).
A unit spills one object; each fuse task reads one byte range of it per unit that had rows of its bucket.

Resources are required through `client.submit(..., resources=...)`, never `dask.annotate` (annotations
on dask DataFrame graphs are dropped by the query optimizer), and checked before anything is submitted:
a task whose resource no worker has would wait forever.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import CancelledError
from contextlib import contextmanager
from itertools import islice

from pipeline.config import ConfigError
from pipeline.plan import RunPlan
from pipeline.stages.base import WORKER_STAGES, CounterSink, WorkerContext
from pipeline.stages.group import PartIndex, UnitParts, bucket_partial
from transforms.fuse import job_statistic
from pipeline.stages.unit import CompletedUnit, WorkUnit, complete_unit, read_unit, run_stages
from pipeline.stages.write import fuse_and_write, write_errors
from pipeline.tools import progress

log = logging.getLogger(__name__)
MAX_UNIT_ATTEMPTS = 4  # placements of a unit whose tasks the scheduler cancelled


def _merge(*counters: dict) -> dict:
    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return dict(total)


def _worker_address() -> str | None:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not inside a worker (tests calling tasks directly)
        return None


def _context(verifying_per_host: dict[str, int]) -> WorkerContext:
    from distributed.comm import get_address_host

    address = _worker_address()
    host = get_address_host(address) if address else ""
    return WorkerContext(processes_on_host=verifying_per_host.get(host, 1))


# ---- tasks (run on workers; module-level so workers import them by name) ----------------------------


def read_and_run(plan: RunPlan, unit: WorkUnit, group: int, verifying_per_host: dict[str, int]) -> dict:
    """Reads and validates one unit (error records spilled), then runs the plan's first stage group on it."""
    sink = CounterSink()
    tables = read_unit(plan, unit, sink)
    return run_group(plan, {"tables": tables, "counts": sink.counts, "workers": {}}, group, verifying_per_host)


def run_group(plan: RunPlan, carried: dict, group: int, verifying_per_host: dict[str, int]) -> dict:
    """One stage group over a unit's batches; each stage set up once per worker process."""
    sink = CounterSink()
    specs = plan.stage_groups(separate=True)[group]
    stages = [WORKER_STAGES.acquire(spec, _context(verifying_per_host)) for spec in specs]
    tables = run_stages(stages, carried["tables"], sink, plan.config.engine.verify_ahead)
    return {"tables": tables, "counts": _merge(carried["counts"], sink.counts),
            "workers": {**carried["workers"], _task_name(specs): _worker_address()}}


def spill_unit(plan: RunPlan, carried: dict) -> dict:
    """Buckets the unit's rows into its spill object and marks it complete; returns where each bucket's
    rows are (no rows)."""
    sink = CounterSink()
    done = complete_unit(plan, carried["tables"], sink)
    return {"done": done, "counts": _merge(carried["counts"], sink.counts),
            "workers": {**carried["workers"], "spill": _worker_address()}}


def _task_name(stages) -> str:
    return "+".join(stage.name for stage in stages)


def partial_task(plan: RunPlan, parts: list[str], earlier) -> tuple[object, dict]:
    sink = CounterSink()
    return bucket_partial(plan.fusion, parts, sink, plan.has_sample_index, earlier), sink.counts


def fuse_task(plan: RunPlan, bucket: int, parts: list[str], statistic) -> tuple[tuple[str, int], dict]:
    sink = CounterSink()
    return fuse_and_write(plan, bucket, parts, statistic, sink), sink.counts


def errors_task(plan: RunPlan, file_index: int, parts: list[str]) -> tuple[str, int]:
    return write_errors(plan, file_index, parts)


def release_stages() -> None:
    """Closes every stage this worker process set up (verifier processes, loaded models)."""
    WORKER_STAGES.close_all()


# ---- client side ------------------------------------------------------------------------------------


def _release_worker_stages(client) -> None:
    """Closes the verifier pools and models of this job on every live worker, also after a failure."""
    try:
        client.run(release_stages)
    except (OSError, TimeoutError) as exc:  # the cluster itself is gone: nothing left to release
        log.warning("could not release worker stages: %s", exc)


def _has_resources(worker: dict, required: dict[str, float]) -> bool:
    held = worker.get("resources") or {}
    return all(held.get(name, 0) >= amount for name, amount in required.items())


def _label_in_process_addresses_with_loopback() -> None:
    """The in-process transport names its addresses (labels only: nothing listens on them) after the
    machine's outward IP, which distributed finds by pointing a UDP socket at 8.8.8.8; where there is no
    network (a namespace with only loopback) that warns. Loopback names them as well."""
    from distributed.comm import inproc

    manager = getattr(inproc, "global_manager", None)
    if manager is not None and not getattr(manager, "_ip", True):  # private: left alone when absent
        manager._ip = "127.0.0.1"


@contextmanager
def _client(plan: RunPlan, required: dict[str, float] | None):
    """A Client on --dask-scheduler, or on a LocalCluster sized to this machine.

    The LocalCluster's workers are threads of this process (processes=False): the heavy work already
    runs outside the GIL, in verifier subprocesses and torch kernels, and on two cores a worker and a
    nanny process per worker cost more than they isolate (measured: 1,228 vs 1,101 rows/s, less
    memory). It has `dask_workers` CPU workers with 2 threads each (two units in progress per worker,
    so one unit's reading, validation and spilling overlap another's verification; the verifier pool
    serves them in turn) and, when the RM needs an accelerator, one more worker with 1 thread holding
    the RM resource (where the RM loads once and scores, device chosen there). Workers of a real
    cluster are separate processes, started however the cluster starts them.
    """
    from distributed import Client, LocalCluster

    engine = plan.config.engine
    if engine.dask_scheduler:
        with Client(engine.dask_scheduler, timeout="60s") as client:
            yield client
        return
    if not log.isEnabledFor(logging.INFO):  # distributed logs its start-up at INFO through its own handler
        logging.getLogger("distributed").setLevel(logging.WARNING)
    _label_in_process_addresses_with_loopback()
    cluster = LocalCluster(n_workers=engine.dask_workers, threads_per_worker=2, processes=False,
                           dashboard_address=None, silence_logs=logging.WARNING)
    try:
        if required:
            spec = cluster.new_spec
            cluster.worker_spec["rm"] = {"cls": spec["cls"],
                                         "options": {**spec["options"], "nthreads": 1, "resources": required}}
            cluster.scale(len(cluster.worker_spec))
        with Client(cluster) as client:
            client.wait_for_workers(len(cluster.worker_spec), timeout=180)
            yield client
    finally:
        cluster.close()


class _Placement:
    """Which workers verify: the live workers without the RM resource, refreshed as workers come and go.

    Verification is restricted to them strictly (loose restrictions would let work stealing hand
    verification to an idle GPU worker, which then makes the next RM task wait); when none is left it
    may run anywhere, so the job finishes when every CPU worker is gone.
    """

    def __init__(self, client, required: dict[str, float] | None, refresh_s: float = 1.0):
        from distributed.comm import get_address_host

        self.client = client
        self.required = required
        self.refresh_s = refresh_s
        self.refreshed = 0.0
        self.refresh()
        # Engine processes per host among the verifying workers; fixed for the job (it is part of each
        # worker's stage key, so changing it would start new pools). In-process workers of a LocalCluster
        # (inproc://HOST/PID/N) share one process, hence one verifier pool.
        verifying = self.cpu or list(self.workers)
        one_per_process = {a.rsplit("/", 1)[0] if a.startswith("inproc://") else a: a for a in verifying}
        self.per_host = dict(Counter(get_address_host(a) for a in one_per_process.values()))

    def refresh(self):
        self.workers = self.client.scheduler_info(n_workers=-1)["workers"]
        self.rm = {a for a, w in self.workers.items() if self.required and _has_resources(w, self.required)}
        self.cpu = sorted(set(self.workers) - self.rm)
        self.refreshed = time.monotonic()

    def maybe_refresh(self):
        if time.monotonic() - self.refreshed >= self.refresh_s:
            self.refresh()

    def verify_restrictions(self) -> dict:
        """Keyword arguments for submit: strict CPU workers when the cluster has both kinds, else none."""
        return {"workers": self.cpu} if self.rm and self.cpu else {}

    def prefer_cpu(self) -> dict:
        return {"workers": self.cpu, "allow_other_workers": True} if self.rm and self.cpu else {}


    def stranded(self, restrictions: dict) -> bool:
        """True when every worker a task was restricted to is gone (it would wait forever)."""
        allowed = restrictions.get("workers")
        return bool(allowed) and not set(allowed) & set(self.workers)


class _Job:
    """One run on a connected client: label every unit (bounded window), the fusion's statistic, shards."""

    def __init__(self, plan: RunPlan, client, where: _Placement, required: dict[str, float] | None):
        self.plan = plan
        self.client = client
        self.where = where
        self.required = required
        self.run_id = uuid.uuid4().hex[:8]
        self.plan_future = client.scatter(plan, broadcast=True, hash=False)
        self.attempts: Counter = Counter()
        self.counts: Counter = Counter()
        self.placement: dict[str, Counter] = defaultdict(Counter)
        self.unit_parts: list[UnitParts] = []  # laid out by bucket once every unit is in
        self._index: PartIndex | None = None
        self.error_parts: dict[int, list[str]] = defaultdict(list)

    def submit_unit(self, unit: WorkUnit) -> dict:
        """The unit's chain: one task per stage group (the first also reads), then spill; returns its
        futures and where its CPU tasks may run."""
        self.attempts[unit.name] += 1
        suffix = f"{unit.name}-{self.run_id}-{self.attempts[unit.name]}"
        restrictions = self.where.verify_restrictions()
        futures = []
        for index, group in enumerate(self.plan.stage_groups(separate=True)):
            if any(stage.resources.accelerator for stage in group):
                placement = {"resources": self.required}
            else:
                placement = restrictions if not futures else self.where.prefer_cpu()
            task, first = (read_and_run, unit) if not futures else (run_group, futures[-1])
            futures.append(self.client.submit(task, self.plan_future, first, index, self.where.per_host,
                                              key=f"{_task_name(group)}-{suffix}", pure=False, **placement))
        futures.append(self.client.submit(spill_unit, self.plan_future, futures[-1], key=f"spill-{suffix}",
                                          pure=False, **self.where.prefer_cpu()))
        return {"unit": unit, "futures": tuple(futures), "restrictions": restrictions}

    def collect(self, done: CompletedUnit, counts: dict, workers: dict) -> None:
        """Records a finished unit: its spill files, error file, counters and where each stage ran."""
        self.unit_parts.append(done.parts)
        if done.errors_url:
            self.error_parts[done.file_index].append(done.errors_url)
        self.counts.update(counts)
        for name in progress.UNIT_COUNTERS:
            progress.add(name, counts.get(name, 0))
        for stage, address in workers.items():
            self.placement[stage][address] += 1

    def label_units(self, pending: list[WorkUnit], resumed: list[CompletedUnit], window: int) -> None:
        """Keeps `window` units in flight until every pending unit is spilled; re-places units whose
        verifying workers all died; fails when no worker holding the RM resource is left."""
        from distributed import wait

        for done in resumed:  # finished before a crash: its spill files are complete
            self.collect(done, {}, {})
        units = iter(pending)
        chains = [self.submit_unit(u) for u in islice(units, window)]
        pending_chains = {chain["futures"][-1]: chain for chain in chains}

        def place_again(future) -> None:
            chain = pending_chains.pop(future)
            self.client.cancel(list(chain["futures"]))
            chain = self.submit_unit(chain["unit"])
            pending_chains[chain["futures"][-1]] = chain

        def place_cancelled_again(future) -> None:
            # After a worker loss the scheduler may forget a unit's tasks ("already forgotten"; seen once in
            # the killed-worker test under load): the unit is placed again, a few times at most.
            unit = pending_chains[future]["unit"]
            if self.attempts[unit.name] >= MAX_UNIT_ATTEMPTS:
                raise RuntimeError(f"unit {unit.name}: placed {self.attempts[unit.name]} times, the last one's "
                                   "tasks cancelled by the Dask scheduler")
            log.warning("unit %s: its tasks were cancelled by the Dask scheduler; placing it again", unit.name)
            place_again(future)

        while pending_chains:
            try:
                finished = wait(list(pending_chains), timeout=self.where.refresh_s, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                finished = set()
            except CancelledError:
                finished = set()
                for future in [f for f in pending_chains if f.cancelled()]:
                    place_cancelled_again(future)
            for future in finished:
                if future.cancelled():
                    place_cancelled_again(future)
                    continue
                pending_chains.pop(future)
                result = future.result()
                self.collect(result["done"], result["counts"], result["workers"])
                following = next(units, None)
                if following is not None:
                    chain = self.submit_unit(following)
                    pending_chains[chain["futures"][-1]] = chain
            self.where.maybe_refresh()
            if self.required and not self.where.rm:
                raise RuntimeError(f"every worker holding {self.plan.config.engine.dask_resource} (--dask-resource) "
                                   "left the cluster; the remaining reward-model tasks cannot run anywhere")
            for future, chain in list(pending_chains.items()):
                if self.where.stranded(chain["restrictions"]):  # its CPU workers died: place it again
                    place_again(future)

    def part_index(self) -> PartIndex:
        """Every unit's parts by bucket; built once, after the last unit is collected."""
        if self._index is None:
            self._index = PartIndex(self.unit_parts)
        return self._index

    def statistic(self):
        """The fusion's job statistic (HERO: sigma_bar): per pass, one partial task per bucket, combined here."""
        passes = iter(range(self.plan.fusion.rounds))

        def partials_of(earlier):
            round_ = next(passes)
            partials = self.client.gather([
                self.client.submit(partial_task, self.plan_future, parts, earlier, pure=False,
                                   key=f"sigma-{b:05d}-{self.run_id}" + (f"-{round_}" if round_ else ""),
                                   **self.where.prefer_cpu())
                for b, parts in self.part_index().items()])
            for _, partial_counts in partials:
                self.counts.update(partial_counts)
            return [p for p, _ in partials]

        return job_statistic(self.plan.fusion, partials_of)

    def write(self, statistic) -> None:
        """One fuse-and-write task per shard, one errors task per input file with bad rows."""
        from distributed import as_completed

        submit, prefer = self.client.submit, self.where.prefer_cpu()
        errors = [submit(errors_task, self.plan_future, f, parts, key=f"errors-{f:05d}-{self.run_id}", pure=False,
                         **prefer) for f, parts in sorted(self.error_parts.items())]
        # A fuse task holds a whole shard (~rows_per_shard rows): one in flight per verifying worker keeps
        # peak memory set by --rows-per-shard, whatever the number of shards.

        def fuse(bucket_and_parts):
            bucket, parts = bucket_and_parts
            return submit(fuse_task, self.plan_future, bucket, parts, statistic, key=f"fuse-{bucket:05d}-{self.run_id}",
                          pure=False, **prefer)

        buckets = self.part_index().items()
        in_flight = as_completed([fuse(item) for item in islice(buckets, len(self.where.cpu or self.where.workers))])
        for future in in_flight:
            (_, rows), written_counts = future.result()
            self.counts.update(written_counts)
            progress.add("written", rows)
            following = next(buckets, None)
            if following is not None:
                in_flight.add(fuse(following))
        self.client.gather(errors)


def _check_cluster(plan: RunPlan, where: _Placement, required: dict[str, float] | None) -> None:
    """Fails before anything is submitted when no worker could run a stage (it would wait forever)."""
    engine = plan.config.engine
    if not where.workers:
        raise ConfigError(f"--dask-scheduler {engine.dask_scheduler}: the scheduler has no workers")
    if required and not where.rm:
        seen = {a: w.get("resources") or {} for a, w in where.workers.items()}
        raise ConfigError(
            f"--dask-resource {engine.dask_resource}: no worker of the cluster holds it (workers and their "
            f"resources: {seen}); start GPU workers with `dask worker ADDRESS --resources {engine.dask_resource}` "
            "or name the resource they have with --dask-resource")


def run(plan: RunPlan, pending: list[WorkUnit], resumed: list[CompletedUnit], show_progress: bool) -> dict:
    """Runs the job on Dask; returns counters, per-stage worker placement and wall time."""
    required = plan.config.engine.resource_requirement() if plan.needs_accelerator else None
    started = time.monotonic()
    with _client(plan, required) as client:
        try:
            where = _Placement(client, required)
            _check_cluster(plan, where, required)
            job = _Job(plan, client, where, required)
            threads = sum(where.workers[a]["nthreads"] for a in (where.cpu or where.workers))
            with progress.ProgressDisplay(plan.input_rows, enabled=show_progress):
                job.label_units(pending, resumed, window=max(4, 2 * threads))
                job.write(job.statistic())
        finally:
            _release_worker_stages(client)
    return {"name": "dask", "counters": dict(job.counts), "wall_s": time.monotonic() - started,
            "workers": len(where.workers), "resubmitted_units": sum(job.attempts.values()) - len(job.attempts),
            "placement": {stage: dict(c) for stage, c in job.placement.items()}}
