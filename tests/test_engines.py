"""Every engine wires the same stages: identical output on real data, Beam placement on remote runners,
Beam's local multi-process mode, cluster recipes that build, and one declaration of every option."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label, shared_file
from shards import assert_same_files
from pipeline.config import ConfigError, build_config, options_markdown
from pipeline.tools.demo import write_synthetic_rollouts
from schemas.rollouts import STATUS_VOCABULARIES

REPO = Path(__file__).resolve().parents[1]
VALUE_COLUMNS = ("verifier_score", "rm_score", "group_rm_std", "hero_normalized", "difficulty_weight", "hero_reward",
                 "advantage")


def keyed_rows(output) -> dict:
    table = pq.read_table(Path(output) / "data")
    return {(r["prompt_id"], r["sample_index"]): r for r in table.to_pylist()}


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [
    ("qwen25_math_cot100.parquet", {"rm_score_column": "qwen_rm_score"}),  # a real RM's scores
    ("gsm8k_gpt3_solutions.parquet", {"rm_score_column": "sample_index"}),  # 1,319 groups of 4
    ("processbench_gsm8k_math.parquet", {"rm_backend": "none"}),  # verifier only
])
def test_engines_agree_on_the_shared_files(tmp_path, name, options):
    beam = label(shared_file(name), tmp_path / "beam", **options)
    assert beam["engine"]["name"] == "beam"
    a = keyed_rows(tmp_path / "beam")
    assert len(a) == beam["output_rows"]
    for engine in ENGINE_NAMES[1:]:  # every other registered engine against Beam
        other_manifest = label(shared_file(name), tmp_path / engine, engine=engine, **options)
        assert other_manifest["engine"]["name"] == engine
        for key in ("input_rows", "output_rows", "error_rows", "status_counts", "num_shards"):
            assert beam[key] == other_manifest[key], (engine, key)
        if beam["sigma_bar"] is None:
            assert other_manifest["sigma_bar"] is None
        else:
            assert abs(beam["sigma_bar"] - other_manifest["sigma_bar"]) <= 1e-9, engine
        b = keyed_rows(tmp_path / engine)
        assert a.keys() == b.keys(), engine
        for key, row in a.items():
            other = b[key]
            for column, value in row.items():
                if column in VALUE_COLUMNS and value is not None:
                    assert other[column] == pytest.approx(value, abs=1e-9), (engine, key, column)
                else:
                    assert other[column] == value, (engine, key, column)
            for column, vocabulary in STATUS_VOCABULARIES.items():
                assert row[column] in vocabulary
        # Same shards, same rows in each, same order.
        for path in beam["data_files"]:
            shard = Path(path).name
            assert pq.read_table(path, columns=["prompt_id"]).equals(
                pq.read_table(tmp_path / engine / "data" / shard, columns=["prompt_id"])), (engine, shard)


@pytest.mark.slow
def test_beam_multi_process_mode_gives_identical_output(tmp_path):
    write_synthetic_rollouts(str(tmp_path / "in"), 300, rows_per_file=70, seed=11, missing_reference_every=7,
                             bad_rows=2)
    common = {"rm_score_column": "sample_index", "rows_per_shard": 100, "verifier_workers": 1}
    in_process = label(tmp_path / "in", tmp_path / "one", **common)
    command = [sys.executable, "run_pipeline.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "multi"),
               "--rm-score-column", "sample_index", "--rows-per-shard", "100", "--verifier-workers", "1",
               "--progress", "off", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "labelled 298 of 300 rows (2 in errors/)" in finished.stdout
    for path in in_process["data_files"] + in_process["error_files"]:
        relative = Path(path).relative_to(tmp_path / "one")
        assert pq.read_table(path).equals(pq.read_table(tmp_path / "multi" / relative)), relative


def _accelerator_transforms(pipeline) -> dict[str, bytes]:
    """unique name -> accelerator hint of every transform whose environment carries one (runner API proto)."""
    proto = pipeline.to_runner_api()
    hinted = {env_id: env.resource_hints.get("beam:resources:accelerator:v1")
              for env_id, env in proto.components.environments.items()}
    return {t.unique_name: hinted[t.environment_id] for t in proto.components.transforms.values()
            if t.environment_id and hinted.get(t.environment_id)}


def _transform_names(pipeline) -> set[str]:
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}


def test_accelerator_hint_sits_on_the_rm_step_only_on_remote_runners(tmp_path, tiny_rm_path):
    import apache_beam as beam

    from pipeline.engines.beam import build, check_beam_args
    from pipeline.plan import make_plan

    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16, seed=2)
    # --dry_run: Beam's option check would otherwise ask GCS whether the temp bucket has soft delete on (a
    # request beyond loopback, retried for minutes where the network is closed).
    dataflow = ("--runner", "DataflowRunner", "--project", "my-project-123", "--region", "us-central1",
                "--temp_location", "gs://my-bucket/tmp", "--experiments=no_use_multiple_sdk_containers",
                "--dry_run=True")
    config = build_config({"input": str(tmp_path / "in.parquet"), "output": "gs://my-bucket/out",
                           "rm_model": tiny_rm_path, "rm_accelerator": "type:nvidia-l4;count:1;install-nvidia-driver"},
                          dataflow)
    plan = make_plan(config, "test")
    options = check_beam_args(config.beam_args)
    remote = beam.Pipeline(options=options)  # a DataflowRunner pipeline, built, never run
    build(remote, plan, options)
    hinted = _accelerator_transforms(remote)
    assert hinted and all(name == "Score" or name.startswith("Score/") for name in hinted), hinted
    assert set(hinted.values()) == {b"type:nvidia-l4;count:1;install-nvidia-driver"}
    assert "SeparateScore" in _transform_names(remote)  # the Reshuffle between verification and the RM

    local_options = check_beam_args(())
    local = beam.Pipeline(runner="FnApiRunner", options=local_options)
    build(local, plan, local_options)
    assert _accelerator_transforms(local) == {}
    assert "SeparateScore" not in _transform_names(local)  # the in-process runner would hold it in memory

    # A backend that needs no accelerator gets neither, on any runner.
    precomputed = make_plan(build_config({"input": str(tmp_path / "in.parquet"), "output": "gs://my-bucket/out",
                                          "rm_score_column": "sample_index"}, dataflow), "test")
    remote = beam.Pipeline(options=options)
    build(remote, precomputed, options)
    assert _accelerator_transforms(remote) == {} and "SeparateScore" not in _transform_names(remote)


def test_slurm_recipes_build_with_the_documented_settings():
    from pipeline.tools.deploy import slurm_cpu_cluster, slurm_gpu_job_script

    # The scheduler this starts listens on loopback (by default on the outward address, which it finds by
    # aiming a socket at 8.8.8.8).
    cluster = slurm_cpu_cluster(cores=32, memory="64GB", walltime="04:00:00",
                                scheduler_options={"dashboard_address": None, "interface": "lo"})
    try:
        cpu_script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --cpus-per-task=32" in cpu_script and "--nthreads 32" in cpu_script
    assert "--nanny" in cpu_script and "--resources" not in cpu_script
    gpu_script = slurm_gpu_job_script("tcp://10.0.0.1:8786", cores=8, memory="64GB", walltime="04:00:00")
    assert "#SBATCH --gres=gpu:1" in gpu_script
    assert re.search(r"distributed\.cli\.dask_worker tcp://10\.0\.0\.1:8786 .*--nanny .*--resources GPU=1", gpu_script)


def test_kubernetes_specs_build_with_the_documented_settings():
    from pipeline.tools.deploy import kubernetes_specs

    cluster, gpu_group = kubernetes_specs("herolabel", image="registry.example/herolabel:1", cpu_workers=8,
                                          gpu_workers=2)
    assert cluster["kind"] == "DaskCluster" and cluster["spec"]["worker"]["replicas"] == 8
    worker = gpu_group["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert gpu_group["kind"] == "DaskWorkerGroup" and gpu_group["spec"]["cluster"] == "herolabel"
    assert worker["replicas"] == 2 and container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert container["args"][:3] == ["dask-worker", "--resources", "GPU=1"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_verification_runs_in_a_worker_started_by_the_slurm_job_script(tmp_path):
    """The worker command dask-jobqueue writes into its job script (nanny, daemonic worker process),
    run here against a scheduler, verifies a real file exactly as the Beam engine does."""
    import os
    import shlex
    import signal

    from distributed import Client

    from pipeline.tools.deploy import slurm_cpu_cluster

    # Scheduler and worker on loopback, not the outward address (found by aiming a socket at 8.8.8.8).
    cluster = slurm_cpu_cluster(cores=2, memory="4GB", walltime="00:10:00", interface="lo",
                                scheduler_options={"dashboard_address": None, "interface": "lo"})
    try:
        command_line = cluster.job_script().strip().splitlines()[-1]
        address = cluster.scheduler_address
        worker = subprocess.Popen(shlex.split(command_line), start_new_session=True, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(address) as client:
                client.wait_for_workers(1, timeout=120)
            data = shared_file("qwen25_math_cot100.parquet")
            dask = label(data, tmp_path / "dask", engine="dask", dask_scheduler=address, rm_backend="none",
                         verifier_workers=None)
            beam = label(data, tmp_path / "beam", rm_backend="none")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    finally:
        cluster.close()
    assert dask["status_counts"] == beam["status_counts"]
    assert pq.read_table(tmp_path / "dask" / "data").equals(pq.read_table(tmp_path / "beam" / "data"))


def test_readme_option_table_is_generated_from_the_declarations():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- options:begin -->\n(.*?)\n<!-- options:end -->", readme, re.S)
    assert match, "README.md lacks the generated option table markers"
    assert match.group(1) == options_markdown(), "regenerate it: python -m pipeline.config README.md"


def test_every_option_reaches_the_command_line():
    from run_pipeline import _parser

    from pipeline.config import OPTIONS

    flags = {a for action in _parser()._actions for a in action.option_strings}  # noqa: SLF001
    assert {o.flag for o in OPTIONS} <= flags
    # Backends come from the registry, plug-ins included (conftest registers "fake"), checked by the config.
    args = _parser().parse_args(["--input", "in", "--output", "out", "--rm-backend", "fake"])
    chosen = build_config({"input": args.input, "output": args.output, "rm_backend": args.rm_backend})
    assert chosen.rm.backend == "fake"
    with pytest.raises(ConfigError, match=r"--rm-backend must be one of \('none', 'precomputed', 'transformers', "
                                          r"'vllm', 'fake'\) or a 'package.module:Class' import path, got 'onnx'"):
        build_config({"input": "in", "output": "out", "rm_backend": "onnx"})
    # The plug-in door every worker process resolves itself: an import path, no registration needed.
    by_path = build_config({"input": "in", "output": "out", "rm_backend": "fakes:FakeRewardModel"})
    assert by_path.rm.backend == "fakes:FakeRewardModel"
    with pytest.raises(ConfigError, match="--rm-backend 'fakes:fake_score' is not a RewardBackend subclass"):
        build_config({"input": "in", "output": "out", "rm_backend": "fakes:fake_score"})


def _readme_commands() -> list[list[str]]:
    """Every `python run_pipeline.py ...` command in the README's bash blocks, as argument lists."""
    import shlex

    readme = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python run_pipeline.py"):
                commands.append(shlex.split(line)[2:])
    return commands


def test_readme_commands_parse_into_valid_configs():
    from run_pipeline import _parser

    from pipeline.engines.beam import check_beam_args

    commands = _readme_commands()
    assert len(commands) >= 8
    runners = set()
    for argv in commands:
        args, beam_args = _parser().parse_known_args(argv)
        check_beam_args(tuple(beam_args))  # every Beam flag is one Beam knows
        options = {name: getattr(args, name) for name in vars(args) if getattr(args, name) is not None}
        for cli_only in ("demo", "demo_rows", "verbose", "config"):
            options.pop(cli_only, None)
        if "input" in options:
            config = build_config(options, tuple(beam_args))
            runners.add(config.engine.engine + ":" + next((a.split("=")[-1] for a in beam_args if "Runner" in a), ""))
    assert {"beam:DataflowRunner", "beam:FlinkRunner", "beam:SparkRunner", "dask:"} <= runners, runners


@pytest.mark.slow
def test_data_files_are_byte_identical_whatever_the_execution_settings(tmp_path):
    """Same input and labeling config: the same bytes, whatever the output directory, batch size, number of
    verifier processes or engine (shard metadata holds labeling settings only)."""
    data = shared_file("qwen25_math_cot100.parquet")
    common = {"rm_score_column": "qwen_rm_score", "rows_per_shard": 300}
    runs = [label(data, tmp_path / "beam_big", batch_rows=4096, verifier_workers=2, **common),
            label(data, tmp_path / "beam_small", batch_rows=77, verifier_workers=1, verify_ahead=0, **common),
            label(data, tmp_path / "dask", engine="dask", batch_rows=100, **common)]
    contents = [{Path(p).name: Path(p).read_bytes() for p in run["data_files"]} for run in runs]
    assert len(contents[0]) == 3
    assert_same_files(contents[1], contents[0])
    assert_same_files(contents[2], contents[0])


def test_kuberay_manifest_puts_the_reward_model_on_gpu_nodes():
    import yaml

    from pipeline.tools.deploy import kuberay_cluster

    text = yaml.safe_dump(kuberay_cluster("herolabel", image="registry.example/herolabel:1", cpu_workers=8,
                                          gpu_workers=2))
    manifest = yaml.safe_load(text)  # what kubectl apply would read
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    head = manifest["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head schedules no work
    groups = {g["groupName"]: g for g in manifest["spec"]["workerGroupSpecs"]}
    gpu, cpu = groups["gpu"], groups["cpu"]
    assert gpu["replicas"] == 2 and gpu["rayStartParams"]["num-gpus"] == "1"  # ray start --num-gpus 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cpu["replicas"] == 8 and cpu["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    for pod in [head, gpu, cpu]:
        env = pod["template"]["spec"]["containers"][0]["env"]
        assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in env


@pytest.mark.skipif("ray" not in ENGINE_NAMES, reason="the Ray engine is not registered")
def test_local_ray_cluster_keeps_a_loopback_node_address_and_records_placement(tmp_path):
    from pipeline.engines.ray import LOCAL_NODE_ADDRESS

    write_synthetic_rollouts(str(tmp_path / "in"), 120, rows_per_file=40, seed=12)
    manifest = label(tmp_path / "in", tmp_path / "out", engine="ray", ray_num_cpus=1, verifier_workers=1,
                     rm_score_column="sample_index")
    # Not 127.0.0.1, which Ray would rewrite to an outward address (none exists in a namespace without network).
    assert LOCAL_NODE_ADDRESS.startswith("127.") and LOCAL_NODE_ADDRESS != "127.0.0.1"
    placement = manifest["engine"]["placement"]
    assert placement == {"verify+score": {LOCAL_NODE_ADDRESS: 3}, "spill": {LOCAL_NODE_ADDRESS: 3}}  # a unit a file
    assert manifest["engine"]["nodes"] == 1 and manifest["output_rows"] == 120


LOCAL_GPU = {"address": None, "resource": {"GPU": 1.0}, "cpus": 2}  # the local cluster, as a CPU-only host starts it
JOINED_A = {"address": "127.0.0.2:6379"}
# (open session, this run's --ray-address, its RM resource, its CPUs, reused?): a run never lands on a
# cluster other than the one it names, nor on a local cluster without its RM resource or CPUs.
RAY_SESSIONS = [
    ({}, None, None, 2, True),  # the caller's own ray.init: joined as it is
    ({}, "127.0.0.2:6379", None, 2, False),  # ... unless the run names a cluster
    (JOINED_A, "127.0.0.2:6379", None, 2, True),  # the cluster this process joined before
    (JOINED_A, "127.0.0.3:6379", None, 2, False),  # another cluster's address
    (JOINED_A, None, None, 2, False),  # a local run after a joined one: the local cluster, not the joined one
    (LOCAL_GPU, "127.0.0.2:6379", None, 2, False),  # a joined run after a local one
    (LOCAL_GPU, None, {"GPU": 1.0}, 2, True),  # the same local cluster again
    (LOCAL_GPU, None, None, 2, True),  # a run that needs no RM resource
    (LOCAL_GPU, None, None, 1, False),  # --ray-num-cpus changed
    (LOCAL_GPU, None, {"TPU": 1.0}, 2, False),  # a custom resource the local cluster did not declare
]


@pytest.mark.skipif("ray" not in ENGINE_NAMES, reason="the Ray engine is not registered")
@pytest.mark.parametrize("session,address,requirement,cpus,reused", RAY_SESSIONS)
def test_an_open_ray_session_is_reused_only_for_the_cluster_the_run_asks_for(monkeypatch, session, address,
                                                                             requirement, cpus, reused):
    from pipeline.config import build_config
    from pipeline.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine, "_SESSION", dict(session))
    options = {"input": "in.parquet", "output": "out", "engine": "ray", "rm_backend": "none"}
    engine = build_config({**options, **({"ray_address": address} if address else {})}).engine
    assert ray_engine._reusable(engine, requirement, cpus) is reused


def test_dask_in_process_addresses_are_named_on_loopback(monkeypatch):
    """Not after the outward IP (found by aiming a socket at 8.8.8.8, which warns without a network)."""
    from distributed.comm import inproc

    from pipeline.engines.dask import _label_in_process_addresses_with_loopback

    monkeypatch.setattr(inproc.global_manager, "_ip", None)
    _label_in_process_addresses_with_loopback()
    assert inproc.global_manager.ip == "127.0.0.1"
