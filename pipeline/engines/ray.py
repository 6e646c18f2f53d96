"""The Ray adapter: the plan's units of work and stage groups as Ray tasks. It computes nothing itself.

Per unit one task per stage group (the plan's stages cut where their resources change; the first also
reads the unit), named after its stages ("verify", "score"), then a "spill" task that writes the unit's
spill files and completion marker, or, when the last group runs on CPUs, that group's task spills too
("verify+score+spill": the rows do not pass through the object store); then a "sigma" task per bucket (the fusion's partial
statistic), a "fuse" task per shard and an "errors" task per input file with bad rows. Tasks, not actors:
a lost node's task outputs are rebuilt from lineage (each task may be retried), actor state is not.

Placement: a group whose stages need an accelerator requests --ray-resource (`GPU=1` is num_gpus=1, any
other name a custom resource); the others request a CPU per verifier process of their task (one by default)
and prefer nodes without that resource (a soft node affinity, so they still run when only accelerator
nodes are left). Set-up once per worker process: a worker-side cache (pipeline/stages/base.py
WORKER_STAGES) in each Ray worker process, which Ray reuses across the job's tasks; not an actor per
node, whose state (a loaded model) would be lost with its node while the tasks' outputs are not. Ray ends
a job's worker processes with the job, and with them their verifier pools and models. At most twice the
verifying CPUs' worth of units is in flight, and one fuse task (a whole shard) per verifying node, so
memory stays flat whatever the input size.

Without --ray-address a local cluster sized to this machine starts on a loopback node address, once per
process (later runs reuse it), with usage statistics off; with no accelerator here it declares the RM
resource itself (the RM then runs on the CPU, as on Dask's LocalCluster).
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from itertools import islice

from pipeline.config import ConfigError, parse_resource
from pipeline.plan import RunPlan
from pipeline.stages.base import WORKER_STAGES, CounterSink, WorkerContext, release_memory
from pipeline.stages.group import PartIndex, UnitParts, bucket_partial
from transforms.fuse import job_statistic
from pipeline.stages.unit import CompletedUnit, WorkUnit, complete_unit, read_unit, run_stages
from pipeline.stages.write import fuse_and_write, write_errors
from pipeline.storage.faults import FAULT_COUNTS_ENV, FAULT_ENV, FAULT_GROUP_ENV
from pipeline.tools import progress

log = logging.getLogger(__name__)
# The local cluster's node address: loopback, but not 127.0.0.1 or localhost, which Ray rewrites to the
# machine's outward address (and where there is none, as in a namespace without network, cannot start).
LOCAL_NODE_ADDRESS = "127.0.0.2"
TASK_RETRIES = 3  # re-executions of a task whose worker or node died


_WORKER_RUN: dict = {}  # in a worker process: the run its set-up stages belong to


def _run_group(plan: RunPlan, unit: WorkUnit | None, carried, group: int, host_cpus: int, run_id: str,
               spill: bool = False):
    """One stage group over a unit (reading it first when `unit` is given); with `spill`, the unit's spill
    too (the last group, on CPUs: its rows then never pass through the object store). A worker process that
    served an earlier run in this job (a reused local cluster) closes that run's stages first: their caches
    and models belong to it."""
    if _WORKER_RUN.get("id") != run_id:
        WORKER_STAGES.close_all()
        _WORKER_RUN["id"] = run_id
    sink = CounterSink()
    tables = read_unit(plan, unit, sink) if unit is not None else carried["tables"]
    specs = plan.stage_groups(separate=True)[group]
    context = WorkerContext(processes_on_host=max(1, host_cpus))
    stages = [WORKER_STAGES.acquire(spec, context) for spec in specs]
    tables = run_stages(stages, tables, sink, plan.config.engine.verify_ahead)
    counts = Counter(carried["counts"] if carried else {})
    counts.update(sink.counts)
    nodes = {**(carried["nodes"] if carried else {}), "+".join(spec.name for spec in specs): _node_address()}
    carried = {"tables": tables, "counts": dict(counts), "nodes": nodes}
    if not spill:
        return carried
    try:
        return _spill(plan, carried)
    finally:
        del carried, tables
        release_memory()


def _spill(plan: RunPlan, carried: dict) -> tuple[CompletedUnit, dict, dict]:
    sink = CounterSink()
    done = complete_unit(plan, carried["tables"], sink)
    counts = Counter(carried["counts"])
    counts.update(sink.counts)
    return done, dict(counts), {**carried["nodes"], "spill": _node_address()}


def _node_address() -> str:
    """The id of the node this task runs on (the driver names it by its address in the manifest)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _partial(plan: RunPlan, parts: list[str], earlier):
    sink = CounterSink()
    return bucket_partial(plan.fusion, parts, sink, plan.has_sample_index, earlier), sink.counts


def _fuse(plan: RunPlan, bucket: int, parts: list[str], statistic):
    sink = CounterSink()
    return fuse_and_write(plan, bucket, parts, statistic, sink), sink.counts


def _errors(plan: RunPlan, file_index: int, parts: list[str]):
    return write_errors(plan, file_index, parts)


# The session this process opened: {"address": ADDRESS} for a cluster it joined, {"address": None,
# "resource": ..., "cpus": N} for the local cluster it started (empty: none, or the caller's own ray.init).
_SESSION: dict = {}


def _reusable(engine, requirement: dict[str, float] | None, cpus: int) -> bool:
    """Whether the open session serves this run (otherwise it is left and another opened)."""
    if not _SESSION:  # the caller's own session: joined as it is, unless this run names a cluster
        return not engine.ray_address
    if engine.ray_address or _SESSION["address"]:
        return _SESSION["address"] == engine.ray_address
    declared = _SESSION["resource"]
    has_resource = not requirement or requirement == declared or _local_has(requirement)
    return has_resource and _SESSION["cpus"] == cpus


def _connect(plan: RunPlan, requirement: dict[str, float] | None):
    import ray

    engine = plan.config.engine
    cpus = engine.ray_num_cpus or os.cpu_count() or 1
    if ray.is_initialized():
        if _reusable(engine, requirement, cpus):
            return ray
        # Another cluster, or a local one without this run's RM resource or CPUs: leave it (a joined
        # cluster keeps running) and open the session this run asks for.
        if _SESSION and not _SESSION["address"]:
            _stop_local_cluster()
        else:
            ray.shutdown()
        _SESSION.clear()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get(FAULT_ENV):  # tests: a fault in a Ray worker kills this run, as a crash of it would,
        os.environ[FAULT_GROUP_ENV] = str(os.getpgrp())  # at the N-th point reached in the whole run
        if not os.environ.get(FAULT_COUNTS_ENV):
            os.environ[FAULT_COUNTS_ENV] = tempfile.mkdtemp(prefix="herolabel-faults-")
    if engine.ray_address:
        host = engine.ray_address.split("://")[-1].rsplit(":", 1)[0]
        # A driver beside a loopback cluster joins it on the head's address (Ray would pick an outward one).
        local = {"_node_ip_address": host} if host.startswith("127.") else {}
        ray.init(address=engine.ray_address, logging_level=logging.WARNING, log_to_driver=False, **local)
        _SESSION.update(address=engine.ray_address)
        return ray
    extra = {}
    if requirement and not _local_has(requirement):
        name, amount = next(iter(requirement.items()))
        if name == "GPU":
            extra["num_gpus"] = int(amount) or 1
        else:
            extra["resources"] = {name: amount}
    elif requirement is None and not _local_has({"GPU": 1.0}):
        # Declared even when this run needs none, so that later runs in this process can reuse the cluster.
        extra["num_gpus"] = 1
        requirement = {"GPU": 1.0}
    # address="local": a new cluster of this process's own, never one `ray start` left on this machine.
    ray.init(address="local", _node_ip_address=LOCAL_NODE_ADDRESS, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, num_cpus=cpus, **extra)
    # Once, and after Ray's own exit hook (registered when ray is imported), so that it runs before it.
    atexit.unregister(_stop_local_cluster)
    atexit.register(_stop_local_cluster)
    _SESSION.update(address=None, resource=requirement, cpus=cpus)
    return ray


def _stop_local_cluster() -> None:
    """Stops the local cluster in about 0.3 s instead of 1.5 s (at exit: Ray's own exit hook sleeps 0.5 s;
    ray.shutdown stops each process with SIGTERM and waits up to 1 s before SIGKILL, and the autoscaler
    monitor, of no use on a fixed local cluster and holding no state, always takes the full second)."""
    import ray

    if not ray.is_initialized() or (_SESSION and _SESSION["address"]):  # a joined cluster is not ours to stop
        return
    node = getattr(ray._private.worker, "_global_node", None)  # private: absent in another Ray, then skipped
    for info in getattr(node, "all_processes", {}).get("monitor", []):  # ray_constants.PROCESS_TYPE_MONITOR
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=5)
    ray.shutdown()


def _local_has(requirement: dict[str, float]) -> bool:
    name, amount = next(iter(requirement.items()))
    if name != "GPU":
        return False
    # No GPU device node (NVIDIA's, or ROCm's /dev/kfd): no GPU, and no need to import torch (a second).
    if "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/kfd"):
        return False
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.device_count() >= amount
    except ImportError:
        return False


def _task_options(requirement: dict[str, float] | None) -> dict:
    if not requirement:
        return {}
    name, amount = next(iter(requirement.items()))
    return {"num_gpus": amount, "num_cpus": 0} if name == "GPU" else {"resources": {name: amount}, "num_cpus": 0}


class _Nodes:
    """The live nodes: those holding the RM resource, the others (preferred for CPU work), and their CPUs."""

    def __init__(self, ray, requirement: dict[str, float] | None):
        self.ray = ray
        self.requirement = requirement
        self.refresh()

    def refresh(self) -> None:
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        name, amount = next(iter(self.requirement.items())) if self.requirement else (None, 0)
        self.rm = [n["NodeID"] for n in alive if name and n["Resources"].get(name, 0) >= amount]
        self.cpu = [n["NodeID"] for n in alive if n["NodeID"] not in self.rm and n["Resources"].get("CPU", 0) > 0]
        self.cpus = {n["NodeID"]: int(n["Resources"].get("CPU", 1)) for n in alive}
        self._next = 0

    def prefer_cpu(self) -> dict:
        """A soft affinity to the next node without the RM resource (round robin), when there is one."""
        if not self.cpu or not self.rm:
            return {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = self.cpu[self._next % len(self.cpu)]
        self._next += 1
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}

    def host_cpus(self) -> int:
        """CPUs of the nodes that verify (their verifier pools split them among concurrent tasks)."""
        nodes = self.cpu or list(self.cpus)
        return min((self.cpus[n] for n in nodes), default=1)


def _check_cluster(plan: RunPlan, nodes: _Nodes, requirement: dict[str, float] | None) -> None:
    engine = plan.config.engine
    if requirement and not nodes.rm and not engine.ray_skip_resource_check:
        held = {n["NodeManagerAddress"]: n["Resources"] for n in nodes.ray.nodes() if n.get("Alive")}
        raise ConfigError(f"--ray-resource {engine.ray_resource}: no node of the cluster holds it (nodes and their "
                          f"resources: {held}); start GPU nodes with `ray start --num-gpus N`, name the resource they "
                          "have with --ray-resource, or pass --ray-skip-resource-check for a GPU group that "
                          "autoscales from zero")


def run(plan: RunPlan, pending: list[WorkUnit], resumed: list[CompletedUnit], show_progress: bool) -> dict:
    """Runs the job on Ray; returns counters and wall time."""
    requirement = parse_resource(plan.config.engine.ray_resource, "engine.ray_resource") \
        if plan.needs_accelerator else None
    started = time.monotonic()
    ray = _connect(plan, requirement)
    nodes = _Nodes(ray, requirement)
    _check_cluster(plan, nodes, requirement)
    remote = {name: ray.remote(max_retries=TASK_RETRIES)(task) for name, task in
              (("group", _run_group), ("spill", _spill), ("sigma", _partial), ("fuse", _fuse), ("errors", _errors))}
    plan_ref = ray.put(plan)
    run_id = uuid.uuid4().hex
    groups = plan.stage_groups(separate=True)
    counts: Counter = Counter()
    unit_parts: list[UnitParts] = []  # laid out by bucket once every unit is in
    error_parts: dict[int, list[str]] = defaultdict(list)

    placement: dict[str, Counter] = defaultdict(Counter)

    def collect(done: CompletedUnit, unit_counts: dict, unit_nodes: dict) -> None:
        for stage, address in unit_nodes.items():
            placement[stage][address] += 1
        unit_parts.append(done.parts)
        if done.errors_url:
            error_parts[done.file_index].append(done.errors_url)
        counts.update(unit_counts)
        for name in progress.UNIT_COUNTERS:
            progress.add(name, unit_counts.get(name, 0))

    # A CPU task holds as many CPUs as its verifier pool has processes (one by default: a task per CPU).
    cpu_task_cpus = min(plan.config.verifier.num_workers or 1, max(nodes.cpus.values(), default=1))

    def submit(unit: WorkUnit):
        carried = None
        for index, group in enumerate(groups):
            accelerator = any(stage.resources.accelerator for stage in group)
            options = _task_options(requirement) if accelerator else {"num_cpus": cpu_task_cpus,
                                                                       **nodes.prefer_cpu()}
            # The last group spills the unit itself when it runs on CPUs (a task and a copy of the unit's
            # rows through the object store fewer); after an accelerator group a CPU task spills.
            spill = index == len(groups) - 1 and not accelerator
            name = "+".join(stage.name for stage in group) + ("+spill" if spill else "")
            carried = remote["group"].options(name=name, **options).remote(
                plan_ref, unit if index == 0 else None, carried, index, nodes.host_cpus(), run_id, spill)
            if spill:
                return carried
        return remote["spill"].options(name="spill", num_cpus=cpu_task_cpus, **nodes.prefer_cpu()).remote(plan_ref, carried)

    for done in resumed:  # finished before a crash: its spill files are complete
        collect(done, {}, {})
    window = max(4, 2 * sum(nodes.cpus.get(n, 1) for n in (nodes.cpu or nodes.cpus)))
    # Largest units first: a task is a whole unit, so the last ones in flight are the small ones and no CPU
    # waits idle at the end for a big one (the output does not depend on the order units finish in).
    units = iter(sorted(pending, key=lambda unit: -unit.rows))
    in_flight = [submit(u) for u in islice(units, window)]
    with progress.ProgressDisplay(plan.input_rows, enabled=show_progress):
        while in_flight:
            finished, in_flight = ray.wait(in_flight, num_returns=1)
            for ref in finished:
                collect(*ray.get(ref))
                following = next(units, None)
                if following is not None:
                    in_flight.append(submit(following))
        index = PartIndex(unit_parts)

        def partials_of(earlier):
            partials = ray.get([remote["sigma"].options(name="sigma", num_cpus=cpu_task_cpus, **nodes.prefer_cpu()).remote(
                plan_ref, parts, earlier) for _, parts in index.items()])
            for _, partial_counts in partials:
                counts.update(partial_counts)
            return [p for p, _ in partials]

        statistic = job_statistic(plan.fusion, partials_of)
        errors = [remote["errors"].options(name="errors", num_cpus=cpu_task_cpus).remote(plan_ref, f, parts)
                  for f, parts in sorted(error_parts.items())]
        # A fuse task holds a whole shard (up to --rows-per-shard rows): one in flight per verifying node
        # keeps each node's memory at one shard whatever the input size (Dask: one per CPU worker).
        slots = max(1, len(nodes.cpu or [node for node, cpus in nodes.cpus.items() if cpus > 0]))

        def fuse(bucket: int, parts: list[str]):
            return remote["fuse"].options(name="fuse", num_cpus=cpu_task_cpus, **nodes.prefer_cpu()).remote(
                plan_ref, bucket, parts, statistic)

        buckets = index.items()
        shards = [fuse(*item) for item in islice(buckets, slots)]
        while shards:
            finished, shards = ray.wait(shards, num_returns=1)
            (_, rows), written_counts = ray.get(finished[0])
            counts.update(written_counts)
            progress.add("written", rows)
            following = next(buckets, None)
            if following is not None:
                shards.append(fuse(*following))
        ray.get(errors)
    addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}  # the dead ones too
    placement = {stage: {addresses.get(node, node): count for node, count in where.items()}
                 for stage, where in placement.items()}
    return {"name": "ray", "counters": dict(counts), "wall_s": time.monotonic() - started,
            "nodes": len(nodes.cpus), "rm_nodes": len(nodes.rm),
            "placement": placement}
