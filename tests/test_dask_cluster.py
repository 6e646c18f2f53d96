"""The Dask engine against a real cluster: a `dask scheduler` and `dask worker` OS processes on loopback,
started the default way (with a nanny, so worker processes are daemonic), one holding GPU=1.

What the scheduler itself recorded (its task stream) says where every task ran. The CPU worker is then
SIGKILLed, process group and all, right after the scheduler saw it finish its first verification task:
the job must still complete with identical output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_file
from pipeline.tools.demo import write_synthetic_rollouts
from processes import dask_pipeline, dask_stream_index, dask_task_stream, free_ports, stop

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    # A session of its own, so the test can kill the nanny, its worker and the verifier processes at once.
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=REPO)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, client, {"gpu": (process, address), "cpu": (process, address)})."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask_logs")
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    port = address.rsplit(":", 1)[1]
    processes = [_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                        logs / "scheduler.log")]
    try:
        client = Client(address, timeout="60s")
        gpu = _start([DASK, "worker", address, "--resources", "GPU=1", "--nthreads", "1", "--no-dashboard"],
                     logs / "gpu_worker.log")
        processes.append(gpu)
        client.wait_for_workers(1, timeout=120)
        gpu_address = next(iter(client.scheduler_info()["workers"]))
        cpu = _start([DASK, "worker", address, "--no-dashboard"], logs / "cpu_worker.log")  # the default way
        processes.append(cpu)
        client.wait_for_workers(2, timeout=120)
        cpu_address = next(a for a in client.scheduler_info()["workers"] if a != gpu_address)
        # Make the scheduler keep its task stream from now on (the plugin is installed on first use).
        dask_stream_index(client)
        yield address, client, {"gpu": (gpu, gpu_address), "cpu": (cpu, cpu_address)}
        client.close()
    finally:
        for process in reversed(processes):
            stop(process)


def test_missing_resource_fails_before_submitting(cluster, tmp_path, tiny_rm_path):
    address, client, _ = cluster
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16, seed=1)
    before = dask_stream_index(client)
    finished = subprocess.run(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "out", "--rm-model",
                                        tiny_rm_path, "--dask-resource", "TPU=1"),
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert "--dask-resource TPU=1: no worker of the cluster holds it" in finished.stderr
    assert dask_task_stream(client, before) == []  # nothing was submitted


def test_the_fallback_judge_runs_beside_the_rm_on_the_gpu_worker(cluster, tmp_path, tiny_rm_path):
    # The judge is a stage of its own that needs an accelerator: it joins the RM's task (fallback+score), which
    # only the GPU worker may run, while verification stays on the CPU worker. A tiny random causal LM judges.
    from pipeline.tools.demo import build_tiny_causal_lm

    address, client, workers = cluster
    judge = build_tiny_causal_lm(str(tmp_path / "judge"), seed=0)
    source = pq.read_table(shared_file("qwen25_math_cot100.parquet")).slice(0, 40)
    rows = source.slice(0, 2).to_pylist()
    for i, row in enumerate(rows):  # text answers the rules reject: these reach the judge
        row.update(prompt_id=f"text-{i}", reference="Tuesday", sample_index=0,
                   response="It is \\boxed{\\text{" + ("tuesday" if i else "the day after Monday") + "}}")
    pq.write_table(pa.concat_tables([source, pa.Table.from_pylist(rows, source.schema)]), tmp_path / "in.parquet",
                   row_group_size=14)  # 42 rows: 3 units
    (tmp_path / "judge.j2").write_text("Question: {{ question }}\nGold: {{ gold }}\nAnswer: {{ answer }}\n")
    before = dask_stream_index(client)
    run = subprocess.run(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "out", "--rm-model", tiny_rm_path,
                                       "--fallback-verifier", judge, "--fallback-template", str(tmp_path / "judge.j2"),
                                       "--fallback-max-new-tokens", "4",
                                       "--fallback-parse", r"(?P<correct>[aeiou])|(?P<incorrect>[^aeiou\s])"),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stream = dask_task_stream(client, before)
    assert {w for name, w in stream if name == "fallback+score"} == {workers["gpu"][1]}
    assert {w for name, w in stream if name == "verify"} == {workers["cpu"][1]}
    assert sum(name == "fallback+score" for name, _ in stream) == sum(name == "verify" for name, _ in stream) == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["fallback_verifier"]["rows"]["judged"] == manifest["fallback_verifier"]["rows"]["gated"] >= 2
    verdicts = pq.read_table(tmp_path / "out" / "data").column("fallback_verdict").to_pylist()
    assert sum(v is not None for v in verdicts) == manifest["fallback_verifier"]["rows"]["gated"]


def test_rm_runs_on_the_gpu_worker_and_the_job_survives_losing_the_cpu_worker(cluster, tmp_path, tiny_rm_path):
    address, client, workers = cluster
    gpu_address = workers["gpu"][1]
    cpu_process, cpu_address = workers["cpu"]
    # 2,400 rollouts in 60 row groups of 40: enough units that the job is still running after the kill.
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 2400, seed=3, missing_reference_every=9, bad_rows=4)
    table = pq.read_table(tmp_path / "in.parquet")
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=40)

    # 1. A clean run: every RM task on the GPU worker, every verification on the CPU worker.
    before = dask_stream_index(client)
    clean = subprocess.run(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "clean", "--rm-model",
                                         tiny_rm_path),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    stream = dask_task_stream(client, before)
    assert {w for name, w in stream if name == "score"} == {gpu_address}
    assert {w for name, w in stream if name == "verify"} == {cpu_address}
    assert sum(name == "score" for name, _ in stream) == sum(name == "verify" for name, _ in stream) == 60

    # 2. The same job; kill the CPU worker (nanny, worker and its verifier processes) as soon as the
    # scheduler records its first finished verification task.
    before = dask_stream_index(client)
    job = subprocess.Popen(dask_pipeline(address, tmp_path / "in.parquet", tmp_path / "killed", "--rm-model",
                                         tiny_rm_path),
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while ("verify", cpu_address) not in dask_task_stream(client, before):
        assert job.poll() is None, "the job ended before the CPU worker finished a verification task"
        assert time.monotonic() < deadline, "no verification task finished on the CPU worker"
        time.sleep(0.05)
    os.killpg(cpu_process.pid, signal.SIGKILL)
    cpu_process.wait()
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]

    stream = dask_task_stream(client, before)
    verify_workers = [w for name, w in stream if name == "verify"]
    assert verify_workers[0] == cpu_address and verify_workers[-1] == gpu_address  # verification moved over
    assert {w for name, w in stream if name == "score"} == {gpu_address}
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert (manifest["input_rows"], manifest["output_rows"], manifest["error_rows"]) == (2400, 2396, 4)
    for directory in ("data", "errors"):
        clean_files = sorted(p.name for p in (tmp_path / "clean" / directory).glob("*.parquet"))
        assert clean_files == sorted(p.name for p in (tmp_path / "killed" / directory).glob("*.parquet"))
        for name in clean_files:
            assert pq.read_table(tmp_path / "clean" / directory / name).equals(
                pq.read_table(tmp_path / "killed" / directory / name)), name
