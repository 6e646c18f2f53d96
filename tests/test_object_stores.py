"""Runs from and to real object stores (SeaweedFS's S3, which checks signatures; fake-gcs-server), on
every engine, through the command line as a user runs it: the same bytes as a local run, the score cache
on s3://, a SIGKILL and a resume on s3://, and outputs, inputs or credentials that cannot work refused
before any data moves. Servers: tests/object_stores.py (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES
from object_stores import BUCKET, Store, gcs_server, s3_env, s3_server, seaweedfs  # noqa: F401 - fixtures
from pipeline.tools.demo import write_synthetic_rollouts
from processes import with_fault
from shards import assert_same_files, shard_bytes

REPO = Path(__file__).resolve().parents[1]
ROWS, ROWS_PER_UNIT = 240, 40  # 2 files x 3 row groups: 6 units of work
# Precomputed scores (no model) keep each run to seconds; 2 null responses go to errors/.
RUN_ARGS = ["--rm-score-column", "sample_index", "--rows-per-shard", "100", "--verifier-workers", "1",
            "--progress", "off", "--pairs"]
# The fake RM of tests/fakes.py (instant scores, cached like a model's), registered in the child process.
FAKE_RM_MAIN = ("import sys; from transforms.rm import register_backend; "
                "register_backend('fake', 'fakes:FakeRewardModel'); import run_pipeline; "
                "sys.exit(run_pipeline.main(sys.argv[1:]))")
RUN_TIMEOUT_S = 180

pytestmark = [pytest.mark.object_store, pytest.mark.timeout(300)]


def cli(args: list[str], env: dict[str, str] | None = None, main: str | None = None,
        fault: str | None = None, fault_counts: Path | None = None) -> subprocess.Popen:
    """The command line in a session of its own (a fault SIGKILLs its process group, not the test's),
    with a store's client environment added to this process's."""
    child = with_fault({**os.environ, **(env or {})}, fault, fault_counts)
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"), child.get("PYTHONPATH")) if p)
    program = ["-c", main] if main else ["run_pipeline.py"]
    return subprocess.Popen([sys.executable, *program, *args], cwd=REPO, env=child, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"the run took over {timeout} s: {err[-3000:]}")
    return process.returncode, err


def run_ok(args: list[str], env: dict[str, str] | None = None, main: str | None = None) -> None:
    code, err = finish(cli(args, env, main))
    assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("object_store_input") / "in"
    write_synthetic_rollouts(str(directory), ROWS, rows_per_file=ROWS // 2, row_group_size=ROWS_PER_UNIT, seed=16,
                             missing_reference_every=7, bad_rows=2)
    return directory


@pytest.fixture(scope="module")
def local_run(rollouts, tmp_path_factory) -> Path:
    """The reference: the same job from and to the local disk."""
    output = tmp_path_factory.mktemp("object_store_local") / "out"
    run_ok(["--input", str(rollouts), "--output", str(output), *RUN_ARGS])
    return output


@pytest.fixture(params=["s3", "gs"])
def store(request) -> Store:
    return request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[request.param])


def upload_input(store: Store, rollouts: Path) -> str:
    """The rollouts under the store's in/ (once per server), as the URL to pass as --input."""
    fs = store.filesystem()
    if not fs.exists(f"{BUCKET}/in"):
        fs.put(f"{rollouts}/", f"{BUCKET}/in/", recursive=True)
    return store.url("in")


def download(store: Store, url: str, local: Path) -> Path:
    store.filesystem().get(url.split("://", 1)[1] + "/", f"{local}/", recursive=True)
    return local


def counts(output: Path) -> dict:
    """What a run counted, from its manifest and run report (paths and timings left out)."""
    manifest = json.loads((output / "manifest.json").read_text())
    report = json.loads((output / "run_report.json").read_text())
    card = (output / "README.md").read_text()
    def without_files(pairs: dict) -> dict:
        return {k: v for k, v in pairs.items() if k != "files"}

    return {"manifest": {k: manifest[k] for k in ("status", "input_rows", "output_rows", "error_rows", "sigma_bar",
                                                  "status_counts", "error_reasons", "num_shards", "rm_rows")},
            "pairs": without_files(manifest["pairs"]),
            "report": {**{k: report[k] for k in ("input_rows", "output_rows", "error_rows", "status_counts",
                                                 "verifier_pass_rate_by_source", "rm_score_by_verifier_class",
                                                 "sigma_bar", "rm_vs_verifier_auroc")},
                       "pairs": without_files(report["pairs"])},
            "card": card.split("\n---", 1)[0]}  # the front matter: configs, row and byte counts


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_run_from_and_to_an_object_store_writes_the_local_runs_bytes(store, engine, rollouts, local_run,
                                                                          tmp_path):
    output = store.url(f"out-{engine}")
    run_ok(["--input", upload_input(store, rollouts), "--output", output, "--engine", engine, *RUN_ARGS], store.env)
    got = download(store, output, tmp_path / "got")
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in local_run.iterdir())  # no _shuffle left
    assert len(shard_bytes(got)) == 3
    assert_same_files(shard_bytes(got), shard_bytes(local_run))
    assert_same_files(shard_bytes(got, "pairs"), shard_bytes(local_run, "pairs"))
    # errors/ name the file each bad row came from: the store's URL here, the local path there.
    remote_errors, local_errors = pq.read_table(got / "errors"), pq.read_table(local_run / "errors")
    assert remote_errors.num_rows == 2
    assert remote_errors.drop(["source_file"]).equals(local_errors.drop(["source_file"]))
    assert all(url.startswith(store.url("in") + "/") for url in remote_errors.column("source_file").to_pylist())
    assert counts(got) == counts(local_run)
    manifest = json.loads((got / "manifest.json").read_text())
    assert manifest["engine"]["name"] == engine
    assert all(url.startswith(output + "/") for url in manifest["data_files"] + manifest["pairs"]["files"])


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_score_cache_on_s3_serves_the_second_run(s3_server, engine, rollouts, tmp_path):
    cache = s3_server.url(f"cache-{engine}")
    args = ["--input", str(rollouts), "--rm-backend", "fake", "--cache-dir", cache, "--engine", engine,
            "--verifier-workers", "1", "--progress", "off"]
    for name in ("first", "second"):
        run_ok([*args, "--output", str(tmp_path / name)], s3_server.env, FAKE_RM_MAIN)
    first, second = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("first", "second"))
    assert first["rm_rows"] == {"scored": ROWS - 2, "cached": 0}
    assert second["rm_rows"] == {"scored": 0, "cached": ROWS - 2}
    assert second["verifier_rows"] == {"verified": 0, "cached": ROWS - 2}  # verdicts too
    assert_same_files(shard_bytes(tmp_path / "second"), shard_bytes(tmp_path / "first"))
    assert s3_server.filesystem().glob(f"{BUCKET}/cache-{engine}/*/segments/*/*.parquet")  # the caches are on the store


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_run_on_s3_killed_mid_run_resumes_to_the_same_bytes(s3_server, engine, rollouts, local_run, tmp_path):
    output = s3_server.url(f"killed-{engine}")
    args = ["--input", upload_input(s3_server, rollouts), "--output", output, "--engine", engine, "--shuffle",
            "files", *RUN_ARGS]
    # SIGKILL after the run's 4th unit's spill files, before its marker. Some units are complete on the store,
    # never all: 3, or fewer where units finish in parallel (Ray's worker processes).
    code, err = finish(cli(args, s3_server.env, fault="group:4", fault_counts=tmp_path / "fault-counts"))
    assert code == -signal.SIGKILL, f"expected a SIGKILL, got {code}: {err[-2000:]}"
    fs = s3_server.filesystem()
    assert not fs.exists(f"{BUCKET}/killed-{engine}/manifest.json")
    marked = len(fs.glob(f"{BUCKET}/killed-{engine}/_shuffle/units/*.json"))
    assert 1 <= marked <= 3

    run_ok(args, s3_server.env)  # the same command again
    got = download(s3_server, output, tmp_path / "got")
    assert_same_files(shard_bytes(got), shard_bytes(local_run))
    manifest = json.loads((got / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["engine"]["resumed"] is True
    assert manifest["engine"]["resumed_units"] == marked, "completed units were redone"
    assert manifest["engine"]["counters"]["read"] == ROWS - ROWS_PER_UNIT * marked  # only the rest was read
    # Spill files and checkpoints are gone (SeaweedFS still lists the emptied folder, as a directory).
    left = fs.find(f"{BUCKET}/killed-{engine}/_shuffle", detail=True).values()
    assert not [entry["name"] for entry in left if entry["type"] == "file"]


# (output URL, client environment, text the error must contain), from the two servers: each must stop with
# exit code 2 naming --output before anything is written, and leave nothing behind (no probe, no bucket).
BAD_OUTPUTS = {
    # a misspelled bucket: an error, never a new bucket (s3fs's makedirs would create one)
    "s3-no-bucket": lambda s3, gcs: ("s3://no-such-bucket-16/out", s3.env, "no such bucket"),
    # an identity allowed to read and list only
    "s3-read-only-identity": lambda s3, gcs: (s3.url("refused-reader"), s3_env(s3.endpoint, "reader"),
                                              "Access Denied"),
    # a wrong secret: the server rejects the request's signature
    "s3-wrong-secret": lambda s3, gcs: (s3.url("refused-secret"), s3_env(s3.endpoint, secret="not-the-secret"),
                                        "signature"),
    "gs-no-bucket": lambda s3, gcs: ("gs://no-such-bucket-16/out", gcs.env, "no such bucket"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS)
def test_an_output_that_cannot_be_written_is_refused_before_any_data_moves(s3_server, gcs_server, rollouts, case):
    output, env, reason = BAD_OUTPUTS[case](s3_server, gcs_server)
    started = time.monotonic()
    code, err = finish(cli(["--input", str(rollouts), "--output", output, *RUN_ARGS], env))
    assert code == 2, err[-2000:]
    assert f"error: --output {output} cannot be created or written: " in err and reason in err, err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - started < 60  # no retry loop
    assert not s3_server.filesystem().glob(f"{BUCKET}/refused-*")
    assert not s3_server.filesystem().exists("no-such-bucket-16")
    assert not gcs_server.filesystem().exists("no-such-bucket-16")


def test_wrong_credentials_for_the_input_are_refused_naming_it(s3_server, rollouts, tmp_path):
    source = upload_input(s3_server, rollouts)
    code, err = finish(cli(["--input", source, "--output", str(tmp_path / "out"), *RUN_ARGS],
                           s3_env(s3_server.endpoint, secret="not-the-secret")))
    assert code == 2, err[-2000:]
    assert f"error: --input {source!r} cannot be listed: " in err and "signature" in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_run_whose_s3_server_stops_fails_in_bounded_time_naming_the_url(engine, rollouts, tmp_path):
    """A server of its own, killed once the first unit is complete on it: the run must fail (not hang,
    not retry for minutes), and the error names the object it could not reach."""
    with seaweedfs(tmp_path / "s3") as store:
        source = upload_input(store, rollouts)
        # 50 ms per response (tests/slow_verifier.py): the run lasts about 12 s, the kill comes at about 4.
        sources = ",".join(f"{name}=slow_verifier:verify" for name in ("arith", "fractions", "linear", "algebra"))
        env = {**store.env, "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}  # retries bounded
        process = cli(["--input", source, "--output", store.url("out"), "--engine", engine, "--verifier-sources",
                       sources, *RUN_ARGS], env)
        fs, deadline = store.filesystem(), time.monotonic() + 60
        while not fs.glob(f"{BUCKET}/out/_shuffle/units/*.json") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before the server could be stopped mid-run"
        store.process.kill()
        store.process.wait()
        stopped = time.monotonic()
        code, err = finish(process, timeout=120)
    assert code not in (0, -signal.SIGKILL), err[-3000:]
    assert time.monotonic() - stopped < 60
    assert f"{store.endpoint}/{BUCKET}/" in err, err[-3000:]  # the object (bucket and key) it could not reach
