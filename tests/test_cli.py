"""Command line and YAML config: bad options fail before any data moves, naming the option."""

from __future__ import annotations

import json
import os

import pytest

from conftest import shared_file
from pipeline.config import ConfigError, build_config
from run_pipeline import main

QWEN = shared_file("qwen25_math_cot100.parquet")


# (extra arguments, text the error must contain)
BAD_OPTIONS = [
    (["--alpha", "0.6", "--beta", "0.5"], "--alpha + --beta must be < 1"),  # overlapping bands
    (["--w-min", "3", "--w-max", "1"], "--w-min"),
    (["--verifier-timeout", "0"], "--verifier-timeout"),
    (["--verifier-hard-timeout", "2"], "--verifier-hard-timeout"),  # must exceed the 5 s inner timeout
    (["--rm-max-length", "0"], "--rm-max-length"),
    (["--rows-per-shard", "0"], "--rows-per-shard"),
    (["--bogus-flag", "1"], "unknown option(s): --bogus-flag"),  # not ours and not Beam's
    (["--rm-score-column", "no_such_column"], "'no_such_column' is not an input column"),
    (["--rm-score-column", "prompt"], "expected a number"),
    (["--engine", "ray", "--ray-num-cpus", "0"], "--ray-num-cpus"),  # a local cluster needs a CPU
    (["--ray-address", "127.0.0.2:6379"], "--ray-address"),  # a Ray option on the default (Beam) engine
    # --ray-num-cpus sizes only the local cluster; a running one has its own CPUs
    (["--engine", "ray", "--ray-address", "127.0.0.2:6379", "--ray-num-cpus", "2"], "--ray-num-cpus"),
    (["--engine", "ray", "--ray-resource", "GPU"], "--ray-resource"),  # NAME=AMOUNT
]


@pytest.mark.parametrize("extra,message", BAD_OPTIONS)
def test_bad_options_fail_before_any_data_moves(tmp_path, capsys, extra, message):
    output = tmp_path / "out"
    args = ["--input", QWEN, "--output", str(output)]
    if "--rm-score-column" not in extra:
        args += ["--rm-backend", "none"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (output / "data").exists()


@pytest.mark.parametrize("args,message", [
    (["--output", "x", "--rm-backend", "none"], "--input is required"),
    (["--input", "/no/such/place", "--output", "x", "--rm-backend", "none"], "no such file or directory"),
    (["--input", QWEN, "--output", "x"], "choose a reward model"),
])
def test_missing_or_unreadable_input(tmp_path, capsys, args, message):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_yaml_config_with_flag_override(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(f"input: {QWEN}\noutput: {tmp_path / 'out'}\nrm_score_column: qwen_rm_score\n"
                      "alpha: 0.05\nbeta: 0.05\nverifier_workers: 1\n")
    assert main(["--config", str(config), "--beta", "0.2", "--progress", "off"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["hero"]["alpha"] == 0.05 and manifest["config"]["hero"]["beta"] == 0.2
    assert manifest["config"]["rm"]["backend"] == "precomputed"  # inferred from rm_score_column
    assert "labelled 800 of 800 rows" in capsys.readouterr().out


def test_yaml_unknown_key_is_named(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("input: x\nalpah: 0.1\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown key(s): alpah" in capsys.readouterr().err


def test_build_config_rejects_unknown_flat_option():
    with pytest.raises(ConfigError, match="--colour"):
        build_config({"input": "a", "output": "b", "rm_backend": "none", "colour": "red"})


def _write_inputs(directory, layout: str):
    """Input directories the way users get them wrong (each case names the file at fault)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.tools.demo import synthetic_rollouts

    directory.mkdir()
    good = synthetic_rollouts(16, seed=1)
    if layout == "corrupt":
        pq.write_table(good, directory / "a_good.parquet")
        (directory / "b_corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
        pq.write_table(good, directory / "c_good.parquet")
    elif layout == "empty":
        pq.write_table(good.slice(0, 0), directory / "only_header.parquet")
    elif layout == "incompatible":
        pq.write_table(good.append_column("score", pa.array(range(16), pa.int64())), directory / "a.parquet")
        pq.write_table(good.append_column("score", pa.array([[i] for i in range(16)])), directory / "b.parquet")
    elif layout == "missing":
        pq.write_table(good.drop_columns(["response"]), directory / "no_response.parquet")


@pytest.mark.parametrize("layout,message", [
    ("corrupt", "b_corrupt.parquet is not a readable Parquet file"),  # one bad file among good ones
    ("empty", "the input is empty (1 Parquet file(s), 0 rows"),  # a file with a schema and no rows
    ("incompatible", "column 'score' has incompatible types across files: int64 in "),  # names a file per type
    ("missing", "no input file has a 'response' column"),  # says which column
])
def test_input_problems_fail_fast_naming_the_file(tmp_path, capsys, layout, message):
    _write_inputs(tmp_path / "in", layout)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--rm-backend", "none"]) == 2
    error = capsys.readouterr().err
    assert message in error
    if layout == "incompatible":
        assert "a.parquet" in error and "b.parquet" in error
    assert not (tmp_path / "out" / "data").exists()


# (option, where it points, relative to a tmp directory holding a regular file `f`; text the error must
# contain): each stops before any data moves, naming the option, and leaves nothing behind.
UNWRITABLE = [
    ("--output", "/proc/herolabel-out", "No such file or directory"),  # a filesystem that refuses new entries
    ("--output", "{tmp}/f", "is a file, not a directory"),  # an existing file
    ("--output", "{tmp}/f/out", "is a file, not a directory"),  # a path under a file
    ("--output", "{tmp}/f/deeper/out", "is a file, not a directory"),  # further under it
    ("--cache-dir", "{tmp}/f/cache", "is a file, not a directory"),  # the score cache is written too
]


@pytest.mark.parametrize("option,where,message", UNWRITABLE)
def test_an_unwritable_output_fails_before_any_data_moves(tmp_path, capsys, option, where, message):
    (tmp_path / "f").write_text("a regular file")
    target = where.format(tmp=tmp_path)
    args = {"--input": QWEN, "--output": str(tmp_path / "out"), "--rm-score-column": "qwen_rm_score", option: target}
    if option == "--cache-dir":
        args.update({"--rm-score-column": None, "--rm-model": "/no/model/needed/first"})
    argv = [item for key, value in args.items() if value is not None for item in (key, value)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"error: {option} {target} cannot be created or written: " in error and message in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # not even the output directory
    assert not os.path.exists(target) or target.endswith("/f")


def test_the_write_check_leaves_a_new_output_directory_as_it_found_it(tmp_path):
    from pipeline.storage.preflight import check_writable

    check_writable(str(tmp_path / "a" / "b" / "out"), "--output")
    assert list(tmp_path.iterdir()) == []  # the directories it created for its probe are gone again
    (tmp_path / "kept").mkdir()
    check_writable(str(tmp_path / "kept"), "--output")
    assert list((tmp_path / "kept").iterdir()) == []  # and its probe file
