"""Cluster recipes for the Dask and Ray engines: CPU workers that verify, GPU workers that hold the RM resource.

These build what the README's deployment sections run (and what the tests check builds); herolabel
needs nothing else from a cluster than workers that can import it and a scheduler address.

Slurm (pip install 'herolabel[slurm]'):
    cluster = slurm_cpu_cluster(cores=32, memory="64GB", walltime="04:00:00")  # starts the scheduler
    cluster.scale(jobs=8)                                                       # 8 CPU nodes verify
    script = slurm_gpu_job_script(cluster.scheduler_address, cores=8, memory="64GB", walltime="04:00:00")
    # sbatch the script (once per GPU node); then: run_pipeline.py --engine dask --dask-scheduler ADDRESS

Kubernetes with the dask-kubernetes operator (pip install 'herolabel[kubernetes]'):
    cluster_spec, gpu_group = kubernetes_specs("herolabel", image="REGISTRY/herolabel:TAG", cpu_workers=8,
                                               gpu_workers=2)
    # kubectl apply both (as YAML); run_pipeline.py --engine dask --dask-scheduler tcp://herolabel-scheduler:8786

KubeRay (pip install 'herolabel[ray]'):
    manifest = kuberay_cluster("herolabel", image="REGISTRY/herolabel:TAG", cpu_workers=8, gpu_workers=2)
    # kubectl apply it (as YAML); run_pipeline.py --engine ray --ray-address ray://herolabel-head-svc:10001
"""

from __future__ import annotations

DEFAULT_RESOURCE = "GPU=1"


def _resource_args(resource: str) -> list[str]:
    return ["--resources", resource]


def slurm_cpu_cluster(cores: int, memory: str, walltime: str, **kwargs):
    """A dask-jobqueue SLURMCluster whose jobs each run one worker process with `cores` threads.

    One process per node: its verifier pool then uses every core of the node (cores ÷ 1 process).
    The scheduler runs where this is called. Extra keyword arguments go to SLURMCluster (queue,
    account, job_extra_directives, ...).
    """
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(cores=cores, processes=1, memory=memory, walltime=walltime, **kwargs)


def slurm_gpu_job_script(scheduler_address: str, cores: int, memory: str, walltime: str,
                         resource: str = DEFAULT_RESOURCE, gres: str = "gpu:1", **kwargs) -> str:
    """A Slurm batch script starting one GPU worker for `scheduler_address`, holding `resource`.

    The worker is started as dask-jobqueue starts every worker (`python -m distributed.cli.dask_worker
    ... --nanny`); `--resources GPU=1` makes it the only place RM tasks run.
    """
    from dask_jobqueue.slurm import SLURMJob

    extra_directives = [f"--gres={gres}", *kwargs.pop("job_extra_directives", [])]
    job = SLURMJob(scheduler=scheduler_address, name="herolabel-gpu", cores=cores, processes=1, memory=memory,
                   walltime=walltime, job_extra_directives=extra_directives,
                   worker_extra_args=_resource_args(resource), **kwargs)
    return job.job_script()


def kubernetes_specs(name: str, image: str, cpu_workers: int, gpu_workers: int,
                     resource: str = DEFAULT_RESOURCE, gpus_per_worker: int = 1) -> tuple[dict, dict]:
    """(DaskCluster resource with CPU workers, DaskWorkerGroup resource of GPU workers) for the operator.

    The GPU group's pods request `nvidia.com/gpu` and start `dask worker --resources GPU=1`.
    """
    from dask_kubernetes.operator import make_cluster_spec, make_worker_spec

    cluster = make_cluster_spec(name=name, image=image, n_workers=cpu_workers)
    gpu_group = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": f"{name}-gpu"},
        "spec": {
            "cluster": name,
            "worker": make_worker_spec(image=image, n_workers=gpu_workers,
                                       resources={"limits": {"nvidia.com/gpu": str(gpus_per_worker)}},
                                       worker_command=["dask-worker", *_resource_args(resource)]),
        },
    }
    return cluster, gpu_group


def kuberay_cluster(name: str, image: str, cpu_workers: int, gpu_workers: int, cpus_per_worker: int = 8,
                    gpus_per_worker: int = 1, memory: str = "32Gi") -> dict:
    """A KubeRay RayCluster manifest (ray.io/v1) for `--engine ray`: a head that schedules no work, a CPU
    group that verifies, a GPU group that scores (each pod requests `nvidia.com/gpu` and its Ray node is
    started with `--num-gpus`, so RM tasks land there). Usage statistics stay off in every pod. Write it
    with `yaml.safe_dump(...)` and `kubectl apply -f`; then `run_pipeline.py --engine ray --ray-address
    ray://NAME-head-svc:10001 ...` from a pod or a port-forward."""
    environment = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]

    def container(cpus: int, gpus: int) -> dict:
        limits = {"cpu": str(cpus), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
        return {"name": "ray", "image": image, "env": environment,
                "resources": {"requests": dict(limits), "limits": limits}}

    def group(group_name: str, replicas: int, cpus: int, gpus: int) -> dict:
        return {"groupName": group_name, "replicas": replicas, "minReplicas": 0, "maxReplicas": max(replicas, 1),
                "rayStartParams": {"num-cpus": str(cpus), "num-gpus": str(gpus)},
                "template": {"spec": {"containers": [container(cpus, gpus)]}}}

    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name},
        "spec": {
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
                              "template": {"spec": {"containers": [container(2, 0)]}}},
            "workerGroupSpecs": [group("cpu", cpu_workers, cpus_per_worker, 0),
                                 group("gpu", gpu_workers, cpus_per_worker, gpus_per_worker)],
        },
    }
