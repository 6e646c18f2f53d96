"""Where and how the stages run (EngineConfig, the engine registry); nothing here changes a label. The
pipeline config holds one; its options are in the same table (`python -m pipeline.config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from transforms.checks import NEVER, is_whole, option

# Engine name -> the module that runs a plan on it (pipeline/engines/; imported only when chosen).
ENGINES = {"beam": "pipeline.engines.beam", "dask": "pipeline.engines.dask", "ray": "pipeline.engines.ray"}
DEFAULT_ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"



@dataclass(frozen=True)
class EngineConfig:
    """Where and how the stages run; nothing here changes a label.

    engine: "beam" (default; local FnApiRunner or any Beam runner via --runner), "dask" or "ray".
    verify_ahead: batches verified ahead of the reward model inside a worker, so the scorer does not
    wait for verification (0 turns the overlap off; memory grows by this many batches).
    dask_scheduler: address of a running Dask scheduler; unset starts a LocalCluster on this machine.
    dask_workers: CPU worker processes of that LocalCluster, 2 threads each; each worker's verifier pool
    takes its share of the machine's cores, so the default (1) already uses every core. One more worker
    holds the accelerator resource when the reward model needs one.
    dask_resource: worker resource the RM tasks require, "NAME=AMOUNT"; workers started with
    `--resources NAME=AMOUNT` receive them.
    rm_accelerator: Beam accelerator resource hint put on the RM step on remote runners ("none": no hint).
    ray_address, ray_resource, ray_skip_resource_check: the Ray cluster to join (unset: a local one), the
    resource RM tasks request, and whether to submit when no node holds it yet (autoscaling from zero).
    ray_num_cpus: CPUs of the local Ray cluster (default: this machine's cores); one verification task
    runs per CPU, so this is the local run's verifying parallelism.
    """

    engine: str = option(
        "`beam` (local FnApiRunner, or any runner via --runner), `dask` or `ray`",
        group="engine and placement", choices=tuple(ENGINES), default="beam", stored=NEVER)
    verify_ahead: int = option(
        "batches verified ahead of the RM inside a worker, so the scorer never waits for the verifier; 0 turns "
        "the overlap off",
        group="engine and placement", default=2, stored=NEVER)
    dask_scheduler: str | None = option(
        "address of a running Dask scheduler (tcp://host:8786); unset: a LocalCluster on this machine",
        group="engine and placement", default_text="LocalCluster", default=None, stored=NEVER)
    dask_workers: int = option(
        "CPU worker processes of the LocalCluster (plus one holding the RM resource when the backend needs an "
        "accelerator)",
        group="engine and placement", default=1, stored=NEVER)
    dask_resource: str = option(
        "worker resource every RM task requires (`NAME=AMOUNT`); start GPU workers with `--resources GPU=1`",
        group="engine and placement", default="GPU=1", stored=NEVER)
    ray_address: str | None = option(
        "address of a running Ray cluster (`auto`, HOST:6379 or ray://HOST:10001); unset: a local cluster on this "
        "machine", group="engine and placement", default_text="local cluster", default=None, stored=NEVER)
    ray_resource: str = option(
        "Ray resource every RM task requests (`NAME=AMOUNT`; `GPU=1` is `num_gpus=1`)",
        group="engine and placement", default="GPU=1", stored=NEVER)
    ray_num_cpus: int | None = option(
        "CPUs of the local Ray cluster: one verification task runs per CPU (ignored with --ray-address)",
        group="engine and placement", default_text="this machine's cores", default=None, stored=NEVER)
    ray_skip_resource_check: bool = option(
        "submit even when no node holds --ray-resource yet (an autoscaling GPU group that starts at zero nodes)",
        group="engine and placement", default=False, stored=NEVER)
    rm_accelerator: str = option(
        "Beam accelerator hint on the RM step on remote runners (`none`: no hint)",
        group="engine and placement", default=DEFAULT_ACCELERATOR, stored=NEVER)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine.engine must be one of {tuple(ENGINES)}, got {self.engine!r}")
        if not is_whole(self.verify_ahead, 0):
            raise ValueError(f"engine.verify_ahead must be an integer >= 0, got {self.verify_ahead!r}")
        if not is_whole(self.dask_workers, 1):
            raise ValueError(f"engine.dask_workers must be an integer >= 1, got {self.dask_workers!r}")
        if self.dask_scheduler is not None and self.engine != "dask":
            raise ValueError("engine.dask_scheduler needs engine.engine=dask")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError("engine.ray_address needs engine.engine=ray")
        if self.ray_num_cpus is not None and not is_whole(self.ray_num_cpus, 1):
            raise ValueError(f"engine.ray_num_cpus must be an integer >= 1, got {self.ray_num_cpus!r}")
        if self.ray_num_cpus is not None and self.ray_address is not None:
            raise ValueError("engine.ray_num_cpus sizes the local Ray cluster; a running one (engine.ray_address) "
                             "has its own CPUs")
        self.resource_requirement()  # validates dask_resource
        parse_resource(self.ray_resource, "engine.ray_resource")
        if self.rm_accelerator != "none" and "type:" not in self.rm_accelerator:
            raise ValueError(f"engine.rm_accelerator must look like 'type:nvidia-l4;count:1;install-nvidia-driver' "
                             f"or be 'none', got {self.rm_accelerator!r}")

    def resource_requirement(self) -> dict[str, float]:
        """dask_resource as Dask's resources mapping, e.g. {"GPU": 1.0}."""
        return parse_resource(self.dask_resource, "engine.dask_resource")


def parse_resource(text: str, field_name: str) -> dict[str, float]:
    """"NAME=AMOUNT" as {NAME: AMOUNT}; raises ValueError naming `field_name` otherwise."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w.-]*)\s*=\s*([0-9]*\.?[0-9]+)\s*", str(text))
    if not match or float(match.group(2)) <= 0:
        raise ValueError(f"{field_name} must look like NAME=AMOUNT with AMOUNT > 0 (e.g. GPU=1), got {text!r}")
    return {match.group(1): float(match.group(2))}
