"""Real crashes: the run kills its own process group with SIGKILL at a named point (HEROLABEL_FAULT_AT), or
the test kills it on a timer; the same command then resumes and must write the bytes of a clean run,
without redoing the units it had finished."""

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

from conftest import ENGINE_NAMES, shared_file
from processes import with_fault
from shards import assert_same_files, shard_bytes

REPO = Path(__file__).resolve().parents[1]
ROWS = 2000

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    """The first 2,000 GSM8K solutions in 8 row groups: 8 units of work, so a crash leaves some done."""
    path = tmp_path_factory.mktemp("resume_input") / "gsm8k_2000.parquet"
    pq.write_table(pq.read_table(shared_file("gsm8k_gpt3_solutions.parquet")).slice(0, ROWS), path,
                   row_group_size=250)
    return path


def command(input_path, output, tiny_rm_path, engine: str) -> list[str]:
    return [sys.executable, "run_pipeline.py", "--input", str(input_path), "--output", str(output), "--rm-model",
            tiny_rm_path, "--engine", engine, "--rows-per-shard", "500", "--verifier-workers", "1",
            "--progress", "off"]


def launch(args: list[str], fault: str | None = None) -> subprocess.Popen:
    env = with_fault(dict(os.environ), fault, Path(args[args.index("--output") + 1]).parent / "fault-counts")
    # A session of its own: the fault kills this run's process group, never the test's.
    return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def clean(request, rollouts, tiny_rm_path, tmp_path_factory):
    """(engine, output of an uninterrupted run)."""
    output = tmp_path_factory.mktemp(f"clean_{request.param}") / "out"
    code, err = finish(launch(command(rollouts, output, tiny_rm_path, request.param)))
    assert code == 0, err[-3000:]
    return request.param, output


# (named point, how many times it is reached before the kill): each leaves some units or shards done.
FAULTS = [
    ("verify", 6),  # during verification of the 6th batch (one per unit here)
    ("score", 5),  # during scoring
    ("group", 4),  # after a unit's spill files, before its completion marker
    ("write", 2),  # while writing the second shard
]


# On Ray a kill anywhere inside a unit's tasks is the same crash (every task is in the driver's process
# group): one such point there, plus the shard writes, keeps its share of the suite's time down.
RAY_FAULT_POINTS = ("group", "write")


@pytest.mark.parametrize("point,count", FAULTS)
def test_a_run_killed_at_a_named_point_resumes_to_the_clean_output(clean, rollouts, tiny_rm_path, tmp_path,
                                                                     point, count):
    engine, clean_output = clean
    if engine == "ray" and point not in RAY_FAULT_POINTS:
        pytest.skip(f"on Ray, {RAY_FAULT_POINTS} cover a kill inside a unit's tasks and during the writes")
    output = tmp_path / "out"
    args = command(rollouts, output, tiny_rm_path, engine)
    code, err = finish(launch(args, fault=f"{point}:{count}"))
    assert code == -signal.SIGKILL, f"expected a SIGKILL at {point}:{count}, got {code}: {err[-2000:]}"
    assert not (output / "manifest.json").exists()

    code, err = finish(launch(args))  # the same command again
    assert code == 0, err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["engine"]["resumed"] is True
    assert (manifest["input_rows"], manifest["output_rows"]) == (ROWS, ROWS)
    assert_same_files(shard_bytes(output), shard_bytes(clean_output))
    assert not (output / "_shuffle").exists()
    counters = manifest["engine"]["counters"]
    resumed = manifest["engine"].get("resumed_units", counters.get("resumed_units", 0))
    assert resumed >= 1, "completed units were redone"
    assert counters.get("verified", 0) == ROWS - 250 * resumed  # only the units left undone were verified
    if point == "write":
        assert resumed == 8 and counters.get("shards_kept", 0) >= 1


def test_a_run_killed_on_a_timer_resumes_to_the_clean_output(clean, rollouts, tiny_rm_path, tmp_path):
    engine, clean_output = clean
    output = tmp_path / "out"
    args = command(rollouts, output, tiny_rm_path, engine)
    process = launch(args)
    time.sleep(6)  # somewhere in the middle of the run, wherever that is
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    if not (output / "manifest.json").exists():
        code, err = finish(launch(args))
        assert code == 0, err[-3000:]
    assert_same_files(shard_bytes(output), shard_bytes(clean_output))


def test_resuming_with_other_settings_is_refused_and_a_finished_run_is_kept(clean, rollouts, tiny_rm_path,
                                                                             tmp_path):
    engine, _ = clean
    if engine == "ray":
        pytest.skip("the settings check runs before any engine starts: Beam and Dask cover it")
    output = tmp_path / "out"
    args = command(rollouts, output, tiny_rm_path, engine)
    code, _ = finish(launch(args, fault="score:2"))
    assert code == -signal.SIGKILL
    code, err = finish(launch(args + ["--alpha", "0.05", "--beta", "0.05"]))
    assert code == 2
    assert "holds an unfinished run with other settings (different: labeling.hero.alpha, labeling.hero.beta)" in err
    code, err = finish(launch(args))  # with the original settings it resumes
    assert code == 0, err[-3000:]
    code, err = finish(launch(args))  # and a finished run is not redone
    assert code == 2 and "already holds a complete run" in err


def test_a_run_killed_on_beam_resumes_on_dask(clean, rollouts, tiny_rm_path, tmp_path):
    """Unit markers and spill files are engine-neutral: Dask picks up what Beam finished."""
    engine, clean_output = clean
    if engine != "dask":
        pytest.skip("one direction is enough; runs against the Dask clean output")
    output = tmp_path / "out"
    code, _ = finish(launch(command(rollouts, output, tiny_rm_path, "beam"), fault="group:4"))
    assert code == -signal.SIGKILL
    code, err = finish(launch(command(rollouts, output, tiny_rm_path, "dask")))
    assert code == 0, err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["engine"]["resumed_units"] >= 3 and manifest["output_rows"] == ROWS
    assert_same_files(shard_bytes(output), shard_bytes(clean_output))
