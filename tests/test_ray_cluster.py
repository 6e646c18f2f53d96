"""The Ray engine against a real Ray cluster: a head, a CPU node and a GPU node as separate OS processes on
distinct loopback addresses (Ray rewrites 127.0.0.1, so 127.0.0.2-4), each `ray start --block` in a session
of its own, torn down by the test.

Where every task ran is read from Ray's own records (the state API, served by the head's dashboard). The
CPU node is then SIGKILLed, raylet, workers and all, right after Ray recorded its first finished
verification: the job must still complete on the remaining nodes with the clean run's data files.
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
from processes import free_ports, stop
from shards import assert_same_files, shard_bytes

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, CPU, GPU = "127.0.0.2", "127.0.0.3", "127.0.0.4"
STORE = str(80 * 1024 * 1024)  # bytes of object store per node
# No usage statistics; no token authentication (Ray 2.60's `ray start --head` default) on a loopback cluster.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV}
    return subprocess.Popen([RAY, "start", "--block", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, dashboard URL, {"head"|"cpu"|"gpu": process})."""

    os.environ.update(RAY_ENV)  # the state API client in this process too
    logs = tmp_path_factory.mktemp("ray_logs")
    port, dashboard = free_ports(2, HEAD)
    address = f"{HEAD}:{port}"
    common = ["--object-store-memory", STORE, "--disable-usage-stats"]
    processes = {"head": _start(["--head", "--node-ip-address", HEAD, "--port", str(port), "--num-cpus", "0",
                                 "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", HEAD,
                                 "--dashboard-port", str(dashboard), *common], logs / "head.log")}
    url = f"http://{HEAD}:{dashboard}"
    try:
        _wait_for(url, {HEAD}, logs)
        for name, ip, gpus in (("cpu", CPU, "0"), ("gpu", GPU, "1")):  # one at a time: a loaded GCS times out
            processes[name] = _start(["--address", address, "--node-ip-address", ip, "--num-cpus", "1",
                                      "--num-gpus", gpus, "--dashboard-agent-listen-port", "0", *common],
                                     logs / f"{name}.log")
            _wait_for(url, {ip}, logs)
        yield address, url, processes
    finally:
        for process in reversed(list(processes.values())):
            stop(process, grace_s=10)  # SIGTERM, then SIGKILL to the group (a node whose raylet died lingers)


def _wait_for(url: str, ips: set[str], logs: Path, timeout_s: float = 120) -> None:
    """Until the state API lists every node of `ips` alive."""
    import ray.util.state as state

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            alive = {n.node_ip for n in state.list_nodes(address=url) if n.state == "ALIVE"}
        except Exception:  # noqa: BLE001 - the dashboard is not up yet
            alive = set()
        if alive >= ips:
            return
        assert time.monotonic() < deadline, f"nodes up: {alive}, waiting for {ips}; logs in {logs}"
        time.sleep(1)


def _tasks(url: str) -> list[tuple[str, str, str, str]]:
    """(name, node IP, state, task id) of every task Ray recorded."""
    import ray.util.state as state

    ips = {n.node_id: n.node_ip for n in state.list_nodes(address=url)}
    return [(t.name, ips.get(t.node_id, ""), t.state, t.task_id) for t in state.list_tasks(address=url, limit=10_000)]


def _pipeline(address: str, input_path, output, *extra) -> list[str]:
    return [sys.executable, "run_pipeline.py", "--engine", "ray", "--ray-address", address, "--input",
            str(input_path), "--output", str(output), "--progress", "off", "--verifier-workers", "1", *extra]


def test_the_fallback_judge_runs_beside_the_rm_on_the_gpu_node(cluster, tmp_path, tiny_rm_path):
    # The judge needs an accelerator: it shares the RM's task (fallback+score), placed on the GPU node, while
    # verification stays on the CPU node. A tiny random causal LM judges two text answers the rules reject.
    from pipeline.tools.demo import build_tiny_causal_lm

    address, url, _ = cluster
    judge = build_tiny_causal_lm(str(tmp_path / "judge"), seed=0)
    source = pq.read_table(shared_file("qwen25_math_cot100.parquet")).slice(0, 40)
    rows = source.slice(0, 2).to_pylist()
    for i, row in enumerate(rows):
        row.update(prompt_id=f"text-{i}", reference="Tuesday", sample_index=0,
                   response="It is \\boxed{\\text{" + ("tuesday" if i else "the day after Monday") + "}}")
    pq.write_table(pa.concat_tables([source, pa.Table.from_pylist(rows, source.schema)]), tmp_path / "in.parquet",
                   row_group_size=14)  # 42 rows: 3 units
    (tmp_path / "judge.j2").write_text("Question: {{ question }}\nGold: {{ gold }}\nAnswer: {{ answer }}\n")
    before = {t[3] for t in _tasks(url)}
    run = subprocess.run(_pipeline(address, tmp_path / "in.parquet", tmp_path / "out", "--rm-model", tiny_rm_path,
                                   "--fallback-verifier", judge, "--fallback-template", str(tmp_path / "judge.j2"),
                                   "--fallback-max-new-tokens", "4",
                                   "--fallback-parse", r"(?P<correct>[aeiou])|(?P<incorrect>[^aeiou\s])"),
                         cwd=REPO, capture_output=True, text=True, timeout=400, env={**os.environ, **RAY_ENV})
    assert run.returncode == 0, run.stderr[-3000:]
    tasks = [t for t in _tasks(url) if t[3] not in before and t[2] == "FINISHED"]
    judged = [ip for name, ip, *_ in tasks if name.startswith("fallback+score")]
    assert len(judged) == 3 and set(judged) == {GPU}
    assert {ip for name, ip, *_ in tasks if name == "verify"} == {CPU}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["fallback_verifier"]["rows"]["judged"] == manifest["fallback_verifier"]["rows"]["gated"] >= 2


def test_rm_runs_on_the_gpu_node_and_the_job_survives_losing_the_cpu_node(cluster, tmp_path, tiny_rm_path):
    address, url, processes = cluster
    # 1,600 rollouts in 40 row groups: enough units that the job is still running after the kill.
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 1600, seed=3, missing_reference_every=9, bad_rows=4)
    pq.write_table(pq.read_table(tmp_path / "in.parquet"), tmp_path / "in.parquet", row_group_size=40)

    # 1. A clean run: every RM task on the GPU node, every verification on the CPU node (its preference).
    before = {t[3] for t in _tasks(url)}
    clean = subprocess.run(_pipeline(address, tmp_path / "in.parquet", tmp_path / "clean", "--rm-model",
                                     tiny_rm_path), cwd=REPO, capture_output=True, text=True, timeout=400,
                           env={**os.environ, **RAY_ENV})
    assert clean.returncode == 0, clean.stderr[-3000:]
    tasks = [t for t in _tasks(url) if t[3] not in before and t[2] == "FINISHED"]
    assert {ip for name, ip, *_ in tasks if name == "score"} == {GPU}
    assert {ip for name, ip, *_ in tasks if name == "verify"} == {CPU}
    assert sum(t[0] == "score" for t in tasks) == sum(t[0] == "verify" for t in tasks) == 40

    # 2. The same job; SIGKILL the CPU node (raylet, workers, verifier processes) once Ray records its first
    # finished verification.
    seen = {t[3] for t in _tasks(url)}
    job = subprocess.Popen(_pipeline(address, tmp_path / "in.parquet", tmp_path / "killed", "--rm-model",
                                     tiny_rm_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, **RAY_ENV})
    deadline = time.monotonic() + 200
    while not any(t[:3] == ("verify", CPU, "FINISHED") and t[3] not in seen for t in _tasks(url)):
        assert job.poll() is None, "the job ended before the CPU node finished a verification"
        assert time.monotonic() < deadline, "no verification finished on the CPU node"
        time.sleep(0.2)
    os.killpg(processes["cpu"].pid, signal.SIGKILL)
    processes["cpu"].wait()
    _, err = job.communicate(timeout=400)
    assert job.returncode == 0, err[-3000:]
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["accounted"] and manifest["output_rows"] + manifest["error_rows"] == 1600  # no row lost
    assert_same_files(shard_bytes(tmp_path / "killed"), shard_bytes(tmp_path / "clean"))


def test_a_cluster_without_the_rm_resource_is_refused_before_submitting(cluster, tmp_path, tiny_rm_path):
    address, url, _ = cluster
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 40, seed=4)
    before = {t[3] for t in _tasks(url)}
    # No node of this cluster has a resource named TPU: the RM tasks would wait forever.
    refused = subprocess.run(_pipeline(address, tmp_path / "in.parquet", tmp_path / "out", "--rm-model",
                                       tiny_rm_path, "--ray-resource", "TPU=1"), cwd=REPO, capture_output=True,
                             text=True, timeout=200, env={**os.environ, **RAY_ENV})
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "--ray-resource TPU=1: no node of the cluster holds it" in refused.stderr
    assert "--ray-skip-resource-check" in refused.stderr
    assert not list((tmp_path / "out").rglob("*.parquet"))  # no data moved
    assert not {t[3] for t in _tasks(url)} - before  # nothing was submitted
