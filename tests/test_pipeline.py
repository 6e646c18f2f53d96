"""End-to-end runs of the real Beam pipeline on real Parquet files (shared data and generated rollouts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from conftest import ENGINE_NAMES, label, shared_file
from hero_reference import hero_reference
from pipeline.config import build_config
from pipeline.tools.demo import synthetic_rollouts, write_synthetic_rollouts
from pipeline.storage.fsio import read_file_metadata
from pipeline.run import run

REPO = Path(__file__).resolve().parents[1]
HERO_COLUMNS = ("group_size", "group_rm_std", "hero_normalized", "difficulty_weight", "hero_reward", "advantage")

pytestmark = pytest.mark.slow


def read_output(output) -> pa.Table:
    return pq.read_table(os.path.join(output, "data")).sort_by([("prompt_id", "ascending"), ("sample_index", "ascending")])


def assert_matches_reference_hero(table: pa.Table, sigma_bar: float, tolerance: float = 1e-4,
                                  score_column: str = "rm_score"):
    rows = table.to_pylist()
    expected, expected_sigma_bar = hero_reference([{**r, "rm_score": r[score_column]} for r in rows])
    assert sigma_bar == pytest.approx(expected_sigma_bar, abs=tolerance)
    for i, values in expected.items():
        for name, value in values.items():
            assert rows[i][name] == pytest.approx(value, abs=tolerance), (rows[i]["prompt_id"], name)


def test_acceptance_command_on_real_rm_scores(tmp_path):
    """The issue's acceptance command, run as a user would, on qwen25_math_cot100 with its real RM scores."""
    output = tmp_path / "out"
    command = [sys.executable, "run_pipeline.py", "--input", shared_file("qwen25_math_cot100.parquet"),
               "--output", str(output), "--rm-backend", "precomputed", "--rm-score-column", "qwen_rm_score"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "labelled 800 of 800 rows" in finished.stdout
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["input_rows"], manifest["output_rows"], manifest["error_rows"]) == (800, 800, 0)
    table = read_output(output)
    assert table.num_rows == 800
    # The reference implementation reads the source's float64 scores, not the pipeline's float32 copy.
    assert_matches_reference_hero(table, manifest["sigma_bar"], score_column="qwen_rm_score")
    # Real RM scores survive as float32 and the source's columns pass through untouched.
    source = pq.read_table(shared_file("qwen25_math_cot100.parquet")).sort_by(
        [("prompt_id", "ascending"), ("sample_index", "ascending")])
    assert table.column("qwen_rm_score").to_pylist() == source.column("qwen_rm_score").to_pylist()
    assert table.column("level").to_pylist() == source.column("level").to_pylist()
    assert table.schema.field("sample_index").type == source.schema.field("sample_index").type == pa.int32()
    metadata = read_file_metadata(manifest["data_files"][0])
    assert metadata["sigma_bar"] == pytest.approx(manifest["sigma_bar"])
    assert metadata["reward_model"] == {"backend": "precomputed", "name": "column:qwen_rm_score"}
    assert metadata["config"]["hero"]["alpha"] == 0.1 and metadata["herolabel_version"]


@pytest.mark.parametrize("name,minimum", [
    ("gsm8k_gpt3_solutions.parquet", 0.995),  # GPT-3 "A: N" solutions, OpenAI's final-answer labels
    ("processbench_gsm8k_math.parquet", 0.985),  # 10 models' step-by-step solutions, ProcessBench labels
])
def test_verifier_agrees_with_source_labels(tmp_path, name, minimum):
    manifest = label(shared_file(name), tmp_path / "out", rm_backend="none")
    table = read_output(tmp_path / "out")
    assert manifest["output_rows"] == table.num_rows == pq.read_metadata(shared_file(name)).num_rows
    agree = pc.equal(pc.fill_null(table.column("verifier_score"), 0.0),
                     pc.cast(table.column("label_correct"), pa.float32()))
    assert pc.mean(pc.cast(agree, pa.float64())).as_py() >= minimum
    assert set(table.column("hero_status").to_pylist()) == {"rm_disabled"}
    assert manifest["sigma_bar"] is None


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_bad_rows_land_in_errors_and_the_manifest_adds_up(tmp_path, engine):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = synthetic_rollouts(40, seed=1)
    pq.write_table(good, inputs / "a_good.parquet")
    mixed = synthetic_rollouts(24, seed=2).to_pylist()
    mixed[3]["response"] = None
    mixed[10]["prompt"] = None
    mixed[11]["prompt_id"] = None  # derived from the prompt: not an error
    pq.write_table(pa.Table.from_pylist(mixed, schema=good.schema), inputs / "b_mixed.parquet")
    wrong_type = pa.table({"prompt_id": ["w", "w"], "prompt": ["q", "q"], "response": pa.array([7, 8], pa.int64()),
                           "reference": ["7", "7"]})
    pq.write_table(wrong_type, inputs / "c_wrong_type.parquet")

    # 4 of 66 rows is over the default 1 % error budget; this test is about where bad rows go.
    manifest = label(inputs, tmp_path / "out", rm_backend="none", engine=engine, max_error_rate=0.1)
    assert manifest["input_rows"] == 66
    assert (manifest["output_rows"], manifest["error_rows"]) == (62, 4)
    assert manifest["accounted"] is True
    errors = pq.read_table(tmp_path / "out" / "errors").sort_by([("source_file", "ascending"), ("source_row", "ascending")])
    assert errors.column("reason").to_pylist() == [
        "response is null", "prompt is null",
        "column 'response' has type int64, expected string", "column 'response' has type int64, expected string"]
    assert [Path(f).name for f in errors.column("source_file").to_pylist()] == [
        "b_mixed.parquet", "b_mixed.parquet", "c_wrong_type.parquet", "c_wrong_type.parquet"]
    assert errors.column("source_row").to_pylist() == [3, 10, 0, 1]
    assert json.loads(errors.column("record")[2].as_py())["response"] == 7
    table = read_output(tmp_path / "out")
    assert table.num_rows == 62 and table.column("verifier_status").null_count == 0


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_groups_split_across_files_and_shards_are_complete(tmp_path, engine):
    # 8 rollouts per prompt written 5 rows per file: every group straddles two files.
    write_synthetic_rollouts(str(tmp_path / "split"), 160, rows_per_file=5, seed=4)
    write_synthetic_rollouts(str(tmp_path / "whole.parquet"), 160, seed=4)
    split = label(tmp_path / "split", tmp_path / "out_split", rm_backend="precomputed", rm_score_column="sample_index",
                  rows_per_shard=40, engine=engine)
    whole = label(tmp_path / "whole.parquet", tmp_path / "out_whole", rm_backend="precomputed",
                  rm_score_column="sample_index")
    assert split["num_shards"] == 4 and len(split["data_files"]) >= 2
    shard_of = {}
    for path in split["data_files"]:
        for pid in set(pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_pylist()):
            assert pid not in shard_of, "a prompt group was split between shards"
            shard_of[pid] = path
    a, b = read_output(tmp_path / "out_split"), read_output(tmp_path / "out_whole")
    assert set(a.column("group_size").to_pylist()) == {8}
    for name in HERO_COLUMNS + ("verifier_score", "rm_score"):
        assert a.column(name).to_pylist() == pytest.approx(b.column(name).to_pylist(), abs=1e-12), name
    assert split["sigma_bar"] == pytest.approx(whole["sigma_bar"], abs=1e-12)


def test_engine_shuffle_gives_the_same_rows_as_file_shuffle(tmp_path):
    write_synthetic_rollouts(str(tmp_path / "in"), 96, rows_per_file=30, seed=5, missing_reference_every=5)
    common = {"rm_backend": "precomputed", "rm_score_column": "sample_index", "rows_per_shard": 30}
    label(tmp_path / "in", tmp_path / "files", shuffle="files", **common)
    label(tmp_path / "in", tmp_path / "engine", shuffle="engine", **common)
    assert read_output(tmp_path / "files").equals(read_output(tmp_path / "engine"))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_tiny_transformers_rm_end_to_end(tmp_path, tiny_rm_path, engine):
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 64, seed=6)
    manifest = label(tmp_path / "in.parquet", tmp_path / "out", rm_model=tiny_rm_path, batch_rows=20, engine=engine)
    assert manifest["status_counts"]["rm_status"] == {"ok": 64}
    assert manifest["reward_model"]["backend"] == "transformers"
    assert len(manifest["reward_model"]["fingerprint"]) == 32
    table = read_output(tmp_path / "out")
    assert len(set(table.column("rm_score").to_pylist())) > 8
    assert_matches_reference_hero(table, manifest["sigma_bar"])


def test_fixed_sigma_bar_is_used_and_reported(tmp_path):
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 32, seed=8)
    manifest = label(tmp_path / "in.parquet", tmp_path / "out", rm_score_column="sample_index", sigma_bar=0.25)
    assert manifest["sigma_bar"] == 0.25 and manifest["sigma_bar_source"] == "fixed"
    table = read_output(tmp_path / "out")
    rows = [r for r in table.to_pylist() if r["hero_status"] == "ok"]
    expected, _ = hero_reference(rows, sigma_bar=0.25)
    for i, values in expected.items():
        assert rows[i]["difficulty_weight"] == pytest.approx(values["difficulty_weight"], abs=1e-9)


def test_refuses_to_overwrite_a_previous_run(tmp_path):
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 8, seed=9)
    label(tmp_path / "in.parquet", tmp_path / "out", rm_backend="none")
    with pytest.raises(FileExistsError, match="--overwrite"):
        label(tmp_path / "in.parquet", tmp_path / "out", rm_backend="none")
    again = label(tmp_path / "in.parquet", tmp_path / "out", rm_backend="none", overwrite=True)
    assert again["output_rows"] == 8


# Each example is a full Beam run (~2 s), so no shrinking; explicit examples pin the edge cases.
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.generate])
@given(num_rows=st.integers(1, 60), per_prompt=st.integers(1, 9), bad=st.integers(0, 5), shard_rows=st.integers(5, 80),
       copies=st.integers(0, 4))
@example(num_rows=1, per_prompt=1, bad=1, shard_rows=5, copies=0)  # every row bad: no data rows at all
@example(num_rows=9, per_prompt=9, bad=0, shard_rows=5, copies=0)  # one group larger than a shard's target
@example(num_rows=8, per_prompt=4, bad=2, shard_rows=5, copies=4)  # copies of bad and of good rows
def test_every_input_row_is_accounted_for(tmp_path_factory, num_rows, per_prompt, bad, shard_rows, copies):
    base = tmp_path_factory.mktemp("accounting")
    write_synthetic_rollouts(str(base / "in"), num_rows, rows_per_file=7, responses_per_prompt=per_prompt,
                             bad_rows=bad, seed=num_rows)
    first = sorted((base / "in").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(first).slice(0, copies), base / "in" / "zz_copies.parquet")  # injected duplicates
    manifest = label(base / "in", base / "out", rm_score_column="sample_index", rows_per_shard=shard_rows,
                     max_error_rate=1.0)  # any share of bad rows: this property is about accounting
    total = num_rows + min(copies, pq.read_metadata(first).num_rows)
    assert manifest["input_rows"] == total == manifest["output_rows"] + manifest["error_rows"]
    assert manifest["error_rows"] >= min(bad, num_rows)
    assert (base / "out" / "data").is_dir()
    errors = pq.read_table(base / "out" / "errors") if manifest["error_rows"] else None
    if errors is not None:  # no input row is reported twice
        sources = list(zip(errors.column("source_file").to_pylist(), errors.column("source_row").to_pylist()))
        assert len(sources) == len(set(sources))
    if manifest["output_rows"] == 0:
        return
    table = read_output(base / "out")
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("sample_index").to_pylist()))
    assert len(keys) == len(set(keys))  # no rollout labelled twice
    counts = table.group_by("prompt_id").aggregate([("prompt_id", "count"), ("group_size", "max")]).to_pylist()
    assert all(row["prompt_id_count"] == row["group_size_max"] for row in counts)


def test_fsspec_urls_for_input_and_output():
    """Input, spill files and output on an fsspec filesystem (memory://), not the local disk."""
    import fsspec

    fs = fsspec.filesystem("memory")
    table = synthetic_rollouts(24, seed=10)
    for index in range(2):
        with fs.open(f"/herolabel-test/in/part-{index}.parquet", "wb") as handle:
            pq.write_table(table.slice(12 * index, 12), handle)
    manifest = label("memory://herolabel-test/in", "memory://herolabel-test/out", rm_score_column="sample_index")
    assert (manifest["input_rows"], manifest["output_rows"]) == (24, 24)
    assert all(f.startswith("memory://") for f in manifest["input_files"] + manifest["data_files"])
    with fs.open(manifest["data_files"][0], "rb") as handle:
        out = pq.read_table(handle)
    assert out.num_rows == 24 and out.column("hero_status").to_pylist() == ["ok"] * 24
    assert not fs.exists("/herolabel-test/out/_shuffle")
    fs.rm("/herolabel-test", recursive=True)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_run_over_its_error_budget_writes_everything_and_fails(tmp_path, engine):
    """60 % broken rows: the run still writes data + errors, marks the manifest failed and exits 1."""
    rows = synthetic_rollouts(50, seed=12).to_pylist()
    for i in range(30):
        rows[i]["response"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    command = [sys.executable, "run_pipeline.py", "--input", str(tmp_path / "in.parquet"), "--output",
               str(tmp_path / "out"), "--rm-score-column", "sample_index", "--engine", engine, "--progress", "off"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1, finished.stderr[-2000:]
    assert "30 of 50 input rows failed (60.00%), more than --max-error-rate 0.01" in finished.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "--max-error-rate" in manifest["failure"]
    assert (manifest["output_rows"], manifest["error_rows"]) == (20, 30)
    assert manifest["error_budget"]["dominant_reasons"] == {"validate: response is null": 30}
    assert pq.read_table(tmp_path / "out" / "data").num_rows + pq.read_table(tmp_path / "out" / "errors").num_rows == 50
    # The same input within a budget that allows it completes.
    finished = subprocess.run(command + ["--max-error-rate", "0.6", "--overwrite"], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "complete"


def test_failed_verdicts_count_against_the_budget_but_missing_references_do_not(tmp_path):
    import dataclasses


    rows = synthetic_rollouts(40, seed=13).to_pylist()
    for i in range(0, 40, 10):
        rows[i]["response"] += " ERRMARK"  # the test judge reports these 4 as verifier errors
    for i in range(1, 40, 10):
        rows[i]["reference"] = None  # 4 rows without a reference: no_reference, not a failure
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    config = build_config({"input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out"),
                           "rm_score_column": "sample_index", "verifier_workers": 1, "max_error_rate": 0.05})
    config = dataclasses.replace(config, verifier=dataclasses.replace(
        config.verifier, judge="judges:errors_on_marker"))
    from pipeline.outputs.manifest import ErrorBudgetExceeded

    with pytest.raises(ErrorBudgetExceeded, match="4 of 40 input rows failed"):
        run(config, show_progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error_rows"] == 0
    assert manifest["status_counts"]["verifier_status"]["error"] == 4
    assert manifest["status_counts"]["verifier_status"]["no_reference"] == 4
    assert manifest["error_budget"]["dominant_reasons"] == {"verifier_status: error": 4}
    again = run(dataclasses.replace(config, max_error_rate=0.1, overwrite=True), show_progress=False)
    assert again["status"] == "complete" and again["error_budget"]["failed_rows"] == 4


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_duplicate_rollouts_go_to_errors_and_the_first_copy_is_labelled(tmp_path, engine):
    rollouts = synthetic_rollouts(24, seed=14)
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(rollouts, inputs / "a.parquet")
    pq.write_table(rollouts.slice(0, 3), inputs / "b.parquet")  # 3 rows written twice
    manifest = label(inputs, tmp_path / "out", rm_score_column="sample_index", engine=engine, max_error_rate=0.2)
    assert (manifest["input_rows"], manifest["output_rows"], manifest["error_rows"]) == (27, 24, 3)
    errors = pq.read_table(tmp_path / "out" / "errors").sort_by("source_row")
    assert [Path(f).name for f in errors.column("source_file").to_pylist()] == ["b.parquet"] * 3
    assert errors.column("source_row").to_pylist() == [0, 1, 2]
    assert errors.column("stage").to_pylist() == ["group"] * 3
    assert errors.column("reason")[0].as_py().startswith("duplicate (prompt_id, sample_index) of ")
    assert errors.column("reason")[0].as_py().endswith("a.parquet row 0")
    assert json.loads(errors.column("record")[0].as_py())["response"] == rollouts.column("response")[0].as_py()
    label(inputs / "a.parquet", tmp_path / "single", rm_score_column="sample_index", engine=engine)
    assert read_output(tmp_path / "out").equals(read_output(tmp_path / "single"))
