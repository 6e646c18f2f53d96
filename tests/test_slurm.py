"""The Slurm recipe for real: a slurmctld and a slurmd on this machine (one node, two cores, a `gpu:1`
generic resource backed by /dev/null), munge for their credentials, all started by the test on 127.0.0.1
with a fresh state directory and torn down after.

dask-jobqueue's SLURMCluster (pipeline/tools/deploy.py `slurm_cpu_cluster`) submits the CPU job and
`sbatch` submits the GPU job script (`slurm_gpu_job_script`, `--gres=gpu:1`); both run `dask worker`
against the scheduler in this process. The pipeline runs against that cluster with the tiny transformers
RM; the scheduler's task stream says where every task ran. Then the CPU job is cancelled with `scancel`
mid-run: the run still completes, with the clean run's data files.

Needs root and Debian's `slurmctld slurmd slurm-client munge` (.ci/run installs them); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.tools.demo import write_synthetic_rollouts
from processes import dask_pipeline, dask_stream_index, dask_task_stream
from shards import assert_same_files, shard_bytes

REPO = Path(__file__).resolve().parents[1]
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")

pytestmark = [
    pytest.mark.slurm, pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0 or not all(map(shutil.which, DAEMONS)),
                       reason="needs root and slurmctld, slurmd, slurm-client and munge (apt-get install)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*command: str, env=None, timeout: float = 60) -> str:
    finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr[-2000:]}")
    return finished.stdout


def _node_line(host: str) -> str:
    """This machine's NodeName line as slurmd measures it (CPUs, sockets, memory), for the config."""
    measured = _run("slurmd", "-C").splitlines()[0].split()
    fields = dict(item.split("=", 1) for item in measured if "=" in item)
    fields.pop("NodeName", None)
    memory = int(fields.pop("RealMemory", "2048"))
    hardware = " ".join(f"{k}={v}" for k, v in fields.items() if k != "UpTime")
    return f"NodeName={host} NodeAddr=127.0.0.1 {hardware} RealMemory={memory // 2} Gres=gpu:1 State=UNKNOWN"


def _write_config(root: Path, host: str, socket_path: Path) -> Path:
    for name in ("state", "spool"):
        (root / name).mkdir()
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=herolabel",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
        "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={root / 'state'}",  # fresh each run: an old one keeps a stale GRES list
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt", f"JobCompLoc={root / 'jobs.txt'}",
        "ReturnToService=2", "GresTypes=gpu",
        _node_line(host),
        f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    # Slurm 22.05 drops a GPU without a device file from the node ("file-less GPU"); /dev/null stands in for
    # one (nothing opens it: the tiny RM runs on the CPU).
    (root / "gres.conf").write_text("Name=gpu File=/dev/null\n")
    return conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The SLURM_CONF environment of a running controller and node."""
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    key, socket_path = root / "munge.key", root / "munge.socket"
    _run("mungekey", "--create", "--keyfile", str(key))
    daemons = [subprocess.Popen(["munged", "--foreground", "--force", f"--key-file={key}",
                                 f"--socket={socket_path}", f"--pid-file={root / 'munged.pid'}",
                                 f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munge.seed'}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)]
    conf = _write_config(root, host, socket_path)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        _wait(lambda: socket_path.exists(), "munged's socket", root)
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, start_new_session=True,
                                            stdout=(root / f"{daemon}.out").open("w"), stderr=subprocess.STDOUT))
        _wait(lambda: "idle" in _run("sinfo", "-h", "-o", "%t", env=env), "the node to be idle", root)
        yield env
    finally:
        for daemon in reversed(daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
                    daemon.wait()


def _wait(ready, what: str, logs: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except (RuntimeError, subprocess.TimeoutExpired, FileNotFoundError):
            pass  # not up yet: sinfo fails until slurmctld answers; no job has completed yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout_s} s for {what}; logs in {logs}")
        time.sleep(0.5)


def _jobs(env) -> dict[str, str]:
    """Job id -> state of this cluster's queued and running jobs."""
    lines = _run("squeue", "-h", "-o", "%i %T", env=env).split("\n")
    return dict(line.split() for line in lines if line.strip())


def test_slurm_jobs_run_the_workers_and_the_run_survives_scancel(slurm, tmp_path, tiny_rm_path, monkeypatch):
    from distributed import Client

    from pipeline.tools.deploy import slurm_cpu_cluster, slurm_gpu_job_script

    for name, value in slurm.items():  # sbatch, squeue and scancel (called by dask-jobqueue too) read SLURM_CONF
        monkeypatch.setenv(name, value)
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 1600, seed=3, missing_reference_every=9, bad_rows=4)
    pq.write_table(pq.read_table(tmp_path / "in.parquet"), tmp_path / "in.parquet", row_group_size=40)
    logs = tmp_path / "jobs"
    logs.mkdir()
    # Every address explicit on loopback: auto-detection would pick the hostname's address.
    common = {"memory": "1GB", "walltime": "00:20:00", "queue": "main", "interface": "lo",
              "job_extra_directives": [f"--output={logs}/%j.out"], "local_directory": str(tmp_path / "dask")}
    cluster = slurm_cpu_cluster(cores=1, scheduler_options={"dashboard_address": None, "interface": "lo"},
                                **common)
    try:
        client = Client(cluster)
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        script = tmp_path / "gpu.sbatch"
        script.write_text(slurm_gpu_job_script(address, cores=1, **common))
        gpu_job = _run("sbatch", "--parsable", str(script), env=slurm).strip()
        client.wait_for_workers(1, timeout=120)
        cluster.scale(jobs=1)  # the CPU job
        client.wait_for_workers(2, timeout=120)
        workers = client.scheduler_info()["workers"]
        gpu_worker = next(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))
        cpu_worker = next(a for a in workers if a != gpu_worker)
        jobs = _jobs(slurm)
        assert jobs[gpu_job] == "RUNNING" and len(jobs) == 2, jobs
        cpu_job = next(job for job in jobs if job != gpu_job)
        dask_stream_index(client)  # the scheduler keeps its task stream from here on

        # 1. A clean run: RM tasks on the GPU job's worker, verification on the CPU job's.
        one_verifier = ("--verifier-workers", "1", "--rm-model", tiny_rm_path)
        before = dask_stream_index(client)
        clean = subprocess.run(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "clean", *one_verifier),
                               cwd=REPO, capture_output=True, text=True, timeout=400)
        assert clean.returncode == 0, clean.stderr[-3000:]
        stream = dask_task_stream(client, before)
        assert {worker for name, worker in stream if name == "score"} == {gpu_worker}
        assert {worker for name, worker in stream if name == "verify"} == {cpu_worker}

        # 2. The same job; `scancel` the CPU job once it has finished a verification.
        before = dask_stream_index(client)
        job = subprocess.Popen(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "cancelled", *one_verifier),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 200
        while ("verify", cpu_worker) not in dask_task_stream(client, before):
            assert job.poll() is None, "the run ended before the CPU job finished a verification"
            assert time.monotonic() < deadline, "no verification finished on the CPU job's worker"
            time.sleep(0.2)
        _run("scancel", cpu_job, env=slurm)
        _, err = job.communicate(timeout=400)
        assert job.returncode == 0, err[-3000:]
        assert cpu_job not in _jobs(slurm)
        # Slurm's own record of the job (jobcomp/filetxt: what sacct would list with a database behind it).
        completed = Path(slurm["SLURM_CONF"]).parent / "jobs.txt"
        _wait(lambda: f"JobId={cpu_job} " in completed.read_text(), "the cancelled job's record", completed)
        record = next(line for line in completed.read_text().splitlines() if f"JobId={cpu_job} " in line)
        assert "JobState=CANCELLED" in record, record
        assert_same_files(shard_bytes(tmp_path / "cancelled"), shard_bytes(tmp_path / "clean"))
        client.close()
    finally:
        cluster.close()
        subprocess.run(["scancel", "--user", "root"], env=slurm, capture_output=True, timeout=60)
