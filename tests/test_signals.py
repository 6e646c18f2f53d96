"""Several reward signals in one run: how they are named and checked, their columns against single-model
runs on every engine, a cache per model, and models moved off the device giving the same bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label
from pipeline.config import ConfigError, build_config
from pipeline.plan import make_plan
from pipeline.stages.base import CounterSink, WorkerContext
from pipeline.stages.score import ScoreStage
from pipeline.storage.fsio import read_file_metadata
from pipeline.tools.demo import build_tiny_reward_model, synthetic_rollouts
from transforms.rm import RewardModelConfig
from transforms.rm.signals import RewardSignal, SignalSet

import fakes


@pytest.fixture(scope="module")
def second_rm_path(tmp_path_factory) -> str:
    """A second tiny RM: same shapes, other weights (seed 1), so its scores differ from the first's."""
    return build_tiny_reward_model(str(tmp_path_factory.mktemp("tiny_rm_b")), seed=1)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    """96 synthetic rollouts in two files, with a precomputed score column `pre` (a third signal)."""
    directory = tmp_path_factory.mktemp("signals_in")
    for index in range(2):
        table = synthetic_rollouts(48, seed=20 + index)
        table = table.append_column("pre", pa.array(np.random.default_rng(index).normal(0, 2, 48)))
        pq.write_table(table, directory / f"part-{index}.parquet")
    return directory


# --- naming and checking, before any data moves -----------------------------------------------------------

BASE = {"input": "in", "output": "out"}

SIGNAL_CONFIGS = [
    # models and a precomputed column, in the order given; the first feeds the fusion
    ({"rm_model": "a=/m/a,b=/m/b,c=column:pre"}, ["a", "b", "c"], ["transformers", "transformers", "precomputed"], "a"),
    # --rm-score-column takes named columns too, after the models
    ({"rm_model": "a=/m/a", "rm_score_column": "x=s1,y=s2"}, ["a", "x", "y"],
     ["transformers", "precomputed", "precomputed"], "a"),
    # the shared backend option applies to every model signal
    ({"rm_model": "a=/m/a,b=/m/b", "rm_backend": "vllm", "fusion_rm": "b", "rm_gpu_memory_utilization": 0.4},
     ["a", "b"], ["vllm", "vllm"], "b"),
    # YAML mapping: per-model backend and settings, a string entry being a path or column:COL
    ({"rm_models": {"big": {"path": "/m/big", "dtype": "bfloat16", "max_length": 2048}, "pre": "column:pre"}},
     ["big", "pre"], ["transformers", "precomputed"], "big"),
]


@pytest.mark.parametrize("options,names,backends,fusion", SIGNAL_CONFIGS)
def test_named_signals_become_one_config_each(options, names, backends, fusion):
    config = build_config({**BASE, **options})
    assert [s.name for s in config.rm_signals] == names
    assert [s.config.backend for s in config.rm_signals] == backends
    assert config.fusion_signal == fusion
    assert config.rm == config.rm_signals[names.index(fusion)].config  # rm_score's signal
    assert set(config.labeling_dict()["rm_signals"]) == set(names)


def test_yaml_settings_apply_to_their_model_and_shared_ones_to_the_rest():
    config = build_config({**BASE, "rm_max_length": 1024,
                           "rm_models": {"a": {"path": "/m/a", "max_length": 512}, "b": "/m/b"}})
    a, b = (s.config for s in config.rm_signals)
    assert (a.max_length, b.max_length) == (512, 1024)


def test_one_named_signal_is_a_run_with_one_reward_model():
    named = build_config({**BASE, "rm_model": "main=/m/a"})
    plain = build_config({**BASE, "rm_model": "/m/a"})
    assert named.rm_signals == () and named.rm == plain.rm
    assert named.labeling_dict() == plain.labeling_dict()  # so its outputs keep today's bytes


BAD_SIGNALS = [
    # a name must be identifier-like
    ({"rm_model": "1a=/m/a,b=/m/b"}, "name"),
    ({"rm_models": {"a-b": "/m/a", "c": "/m/c"}}, "rm_models.a-b"),
    # names are unique across the options
    ({"rm_model": "a=/m/a", "rm_score_column": "a=pre"}, "'a' is named twice"),
    # an unnamed model beside named columns
    ({"rm_model": "/m/a", "rm_score_column": "x=pre"}, "--rm-model '/m/a' has no name"),
    # an entry of a list without a value
    ({"rm_model": "a=/m/a,b="}, "NAME=VALUE"),
    # the fusion's signal must be one of them
    ({"rm_model": "a=/m/a,b=/m/b", "fusion_rm": "c"}, "--fusion-rm"),
    # --fusion-rm and --rm-max-resident need several signals
    ({"rm_model": "/m/a", "fusion_rm": "a"}, "--fusion-rm"),
    ({"rm_model": "/m/a", "rm_max_resident": 1}, "--rm-max-resident"),
    ({"rm_model": "a=/m/a,b=/m/b", "rm_max_resident": 0}, "--rm-max-resident must be an integer >= 1"),
    # an unknown per-model setting names its place in the mapping
    ({"rm_models": {"a": {"path": "/m/a", "colour": "red"}, "b": "/m/b"}}, "rm_models.a.colour"),
    # a model entry needs a path or a column, not both
    ({"rm_models": {"a": {"path": "/m/a", "column": "pre"}, "b": "/m/b"}}, "exactly one of path"),
    # a precomputed column takes no model settings
    ({"rm_models": {"a": {"column": "pre", "dtype": "float16"}, "b": "/m/b"}}, "no model settings"),
    # a bad per-model value is reported with its signal
    ({"rm_models": {"a": {"path": "/m/a", "max_length": 0}, "b": "/m/b"}}, "reward signal 'a'.*rm_models.a.max_length must"),
    # two vLLM engines on one GPU worker must not each take 90 % of it
    ({"rm_model": "a=/m/a,b=/m/b", "rm_backend": "vllm"}, "gpu_memory_utilization"),
    # vLLM models cannot be moved off the device
    ({"rm_models": {"a": {"path": "/m/a", "backend": "vllm", "gpu_memory_utilization": 0.4}, "b": "/m/b"},
      "rm_max_resident": 1}, "vllm"),
    # named signals take models and columns; a backend that names none is refused
    ({"rm_model": "a=/m/a,b=/m/b", "rm_backend": "none"}, "names no model"),
]


@pytest.mark.parametrize("options,message", BAD_SIGNALS)
def test_bad_signal_settings_fail_before_any_data_moves_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **options})


def test_a_missing_second_model_fails_at_planning_naming_it(tmp_path, rollouts, tiny_rm_path):
    config = build_config({"input": str(rollouts), "output": str(tmp_path / "out"),
                           "rm_model": f"a={tiny_rm_path},b={tmp_path / 'nowhere'}"})
    with pytest.raises(ConfigError, match="reward signal 'b'.*--rm-model"):
        make_plan(config, "test")
    assert not (tmp_path / "out").exists()


def test_a_headless_second_model_fails_at_planning_naming_it(tmp_path, rollouts, tiny_rm_path):
    """A checkpoint whose head has two outputs is not a reward model; the error names the signal."""
    from transformers import AutoConfig

    path = tmp_path / "two_labels"
    shutil.copytree(tiny_rm_path, path)
    model_config = AutoConfig.from_pretrained(path)
    model_config.num_labels = 2
    model_config.save_pretrained(path)
    config = build_config({"input": str(rollouts), "output": str(tmp_path / "out"),
                           "rm_model": f"a={tiny_rm_path},b={path}"})
    with pytest.raises(ConfigError, match="reward signal 'b'.*num_labels=2"):
        make_plan(config, "test")


def test_a_missing_score_column_fails_at_planning_naming_its_signal(tmp_path, rollouts, tiny_rm_path):
    config = build_config({"input": str(rollouts), "output": str(tmp_path / "out"),
                           "rm_model": f"a={tiny_rm_path},c=column:absent"})
    with pytest.raises(ConfigError, match="reward signal 'c'.*absent"):
        make_plan(config, "test")


# --- the score stage: columns, caches, models moved off the device ----------------------------------------

class ParkingRecorder(fakes.FakeRewardModel):
    """A fake model that records whether it is on the device; scoring while parked is an error."""

    events: list = []

    def load(self) -> None:
        self.on_device = True

    def park(self) -> None:
        self.on_device = False
        self.events.append(("park", self.config.model))

    def unpark(self) -> None:
        self.on_device = True
        self.events.append(("unpark", self.config.model))

    def score_table(self, table):
        if not self.on_device:
            raise AssertionError(f"{self.config.model} scored while parked")
        scored = super().score_table(table)
        offset = float(len(self.config.model))  # a different score per model
        return scored.set_column(scored.schema.get_field_index("rm_score"), "rm_score",
                                 pa.compute.add(scored.column("rm_score"), offset))


def _stage(names: list[str], max_resident: int | None, fusion: str | None = None) -> ScoreStage:
    signals = tuple(RewardSignal(n, RewardModelConfig(backend="test_signals:ParkingRecorder", model=n * 2))
                    for n in names)
    stage = ScoreStage(SignalSet(signals + (RewardSignal("pre", RewardModelConfig(
        backend="precomputed", score_column="pre")),), fusion or names[0], max_resident))
    stage.setup(WorkerContext())
    return stage


def test_one_resident_model_switches_once_per_batch_and_scores_as_resident_ones(rollouts):
    table = pq.read_table(rollouts / "part-0.parquet")
    ParkingRecorder.events = []
    resident = _stage(["a", "b"], None)
    assert ParkingRecorder.events == []  # both fit: nothing moved
    single = _stage(["a", "b"], 1)
    assert ParkingRecorder.events == [("park", "aa")]  # a moved out for b to load
    sink = CounterSink()
    for start in range(0, 48, 16):  # three batches
        batch = table.slice(start, 16)
        assert single.process(batch, sink).equals(resident.process(batch, CounterSink()))
    # b was resident, so batch 1 ran b then a; batch 2 a then b; batch 3 b then a: one switch each
    assert sink.counts["rm_switches"] == 3
    assert [kind for kind, _ in ParkingRecorder.events[1:]] == ["park", "unpark"] * 3
    for stage in (single, resident):
        stage.close()


def test_each_signal_gets_its_columns_and_the_fusion_signal_fills_rm_score(rollouts):
    table = pq.read_table(rollouts / "part-0.parquet")
    stage = _stage(["a", "bb"], None, fusion="bb")
    out = stage.process(table, CounterSink())
    assert out.column_names[-8:] == ["rm_score", "rm_status", "rm_score__a", "rm_status__a", "rm_score__bb",
                                     "rm_status__bb", "rm_score__pre", "rm_status__pre"]
    assert out.column("rm_score").equals(out.column("rm_score__bb"))
    assert out.column("rm_score__pre").to_pylist() == pytest.approx(
        table.column("pre").cast(pa.float32()).to_pylist())
    assert out.column("rm_score__a").to_pylist() != out.column("rm_score__bb").to_pylist()
    stage.close()


# --- whole runs on every engine ---------------------------------------------------------------------------

def _columns(output: Path, names: list[str]) -> dict[str, bytes]:
    """Each column's values in row order across the shards, as bytes (float32 scores compared exactly)."""
    table = pq.read_table(output / "data")
    return {n: table.column(n).combine_chunks().to_numpy(zero_copy_only=False).tobytes()
            if pa.types.is_floating(table.schema.field(n).type) else repr(table.column(n).to_pylist()).encode()
            for n in names}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_each_signal_equals_its_single_model_run_on_every_engine(tmp_path, engine, rollouts, tiny_rm_path,
                                                                 second_rm_path):
    options = {"engine": engine, "rm_device": "cpu", "rm_dtype": "float32"}
    several = label(rollouts, tmp_path / "several",
                    rm_model=f"a={tiny_rm_path},b={second_rm_path},c=column:pre", fusion_rm="b", **options)
    assert several["fusion_rm"] == "b"
    assert set(several["reward_models"]) == {"a", "b", "c"}
    assert several["reward_models"]["a"]["fingerprint"] != several["reward_models"]["b"]["fingerprint"]
    assert several["rm_rows_by_signal"] == {"a": {"scored": 96, "cached": 0}, "b": {"scored": 96, "cached": 0}}
    got = _columns(tmp_path / "several", ["rm_score", "rm_score__a", "rm_status__a", "rm_score__b", "rm_score__c",
                                          "hero_reward", "advantage"])
    singles = {
        "a": label(rollouts, tmp_path / "a", rm_model=tiny_rm_path, **options),
        "b": label(rollouts, tmp_path / "b", rm_model=second_rm_path, **options),
        "c": label(rollouts, tmp_path / "c", rm_score_column="pre", **options),
    }
    for name in singles:
        single = _columns(tmp_path / name, ["rm_score", "rm_status", "hero_reward", "advantage"])
        assert got[f"rm_score__{name}"] == single["rm_score"], name  # byte for byte, fp32 on CPU
        if name == "a":
            assert got["rm_status__a"] == single["rm_status"]
        if name == "b":  # the fusion's signal: rm_score and every fused column are its single run's
            assert got["rm_score"] == single["rm_score"]
            assert got["hero_reward"] == single["hero_reward"] and got["advantage"] == single["advantage"]
    assert got["rm_score__a"] != got["rm_score__b"]
    metadata = read_file_metadata(several["data_files"][0])
    assert set(metadata["reward_models"]) == {"a", "b", "c"} and metadata["fusion_rm"] == "b"


@pytest.mark.slow
def test_caches_are_per_model_and_one_resident_model_gives_the_same_bytes(tmp_path, rollouts, tiny_rm_path,
                                                                          second_rm_path):
    cache = tmp_path / "cache"
    b_path = tmp_path / "b"
    shutil.copytree(second_rm_path, b_path)
    options = {"rm_model": f"a={tiny_rm_path},b={b_path}", "rm_device": "cpu", "cache_dir": str(cache)}
    first = label(rollouts, tmp_path / "first", **options)
    assert first["rm_rows_by_signal"] == {"a": {"scored": 96, "cached": 0}, "b": {"scored": 96, "cached": 0}}
    namespaces = [json.loads((cache / name / "identity.json").read_text()) for name in os.listdir(cache)]
    assert sum(identity.get("cache") != "verdicts" for identity in namespaces) == 2  # a namespace per model
    again = label(rollouts, tmp_path / "again", **options, rm_max_resident=1)
    assert again["rm_rows_by_signal"] == {"a": {"scored": 0, "cached": 96}, "b": {"scored": 0, "cached": 96}}
    # Moving models off the device (one resident) is scheduling only: the same bytes as resident models.
    uncached = {k: v for k, v in options.items() if k != "cache_dir"}
    one = label(rollouts, tmp_path / "one", **uncached, rm_max_resident=1)
    assert one["rm_switches"]["count"] > 0
    for path in first["data_files"]:
        shard = Path(path).name
        assert (tmp_path / "one" / "data" / shard).read_bytes() == Path(path).read_bytes()
        assert (tmp_path / "again" / "data" / shard).read_bytes() == Path(path).read_bytes()
    # Changing one model re-scores only its column.
    build_tiny_reward_model(str(b_path), seed=2)
    changed = label(rollouts, tmp_path / "changed", **options)
    assert changed["rm_rows_by_signal"] == {"a": {"scored": 0, "cached": 96}, "b": {"scored": 96, "cached": 0}}
    before, after = _columns(tmp_path / "first", ["rm_score__a", "rm_score__b"]), \
        _columns(tmp_path / "changed", ["rm_score__a", "rm_score__b"])
    assert before["rm_score__a"] == after["rm_score__a"] and before["rm_score__b"] != after["rm_score__b"]


# --- the report's section per signal -----------------------------------------------------------------------

SPEARMAN_CASES = [
    # same order: 1; reversed: -1
    ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], 1.0),
    ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], -1.0),
    # a tie gets its average rank: ranks (1, 2.5, 2.5) against (1, 2, 3)
    ([0.0, 5.0, 5.0], [1.0, 2.0, 3.0], float(np.corrcoef([1, 2.5, 2.5], [1, 2, 3])[0, 1])),
    # too few rows, or one side constant: undefined
    ([1.0, 2.0], [1.0, 2.0], None),
    ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], None),
]


@pytest.mark.parametrize("x,y,expected", SPEARMAN_CASES)
def test_spearman(x, y, expected):
    from pipeline.outputs.agreement import spearman

    got = spearman(np.array(x), np.array(y))
    assert got == expected if expected is None else got == pytest.approx(expected)


@pytest.mark.slow
def test_the_report_has_a_section_per_signal(tmp_path, rollouts, tiny_rm_path, second_rm_path):
    manifest = label(rollouts, tmp_path / "out", rm_model=f"a={tiny_rm_path},b={second_rm_path},c=column:pre",
                     fusion_rm="c", rm_device="cpu")
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    section = report["reward_signals"]
    assert section["fusion_rm"] == "c" and list(section["signals"]) == ["a", "b", "c"]
    # the fusion's signal is rm_score, so its AUROC is the report's RM-vs-verifier AUROC
    assert section["signals"]["c"]["auroc_vs_verifier"] == report["rm_vs_verifier_auroc"]
    assert section["signals"]["a"]["auroc_vs_verifier"]["mixed_groups"] > 0
    rows = sum(v["rows"] for v in section["signals"]["a"]["score_by_verifier_class"].values())
    assert rows == manifest["output_rows"]
    pairs = section["spearman_within_mixed_groups"]
    assert list(pairs) == ["a~b", "a~c", "b~c"]
    assert all(p["groups"] > 0 and -1 <= p["mean"] <= 1 for p in pairs.values())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "reward signal `c`'s raw score (the one in rm_score" in card
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>reward signals</h2>" in page and "c (fusion)" in page and "a~b" in page


def test_rm_models_is_read_from_a_yaml_config(tmp_path):
    from run_pipeline import _options_from_yaml

    path = tmp_path / "job.yaml"
    path.write_text("input: in\noutput: out\nfusion_rm: old\nrm_models:\n"
                    "  main: {path: /m/main, backend: vllm, gpu_memory_utilization: 0.45}\n"
                    "  old: column:rm_score_v1\n")
    config = build_config(_options_from_yaml(str(path)))
    assert [(s.name, s.config.backend) for s in config.rm_signals] == [("main", "vllm"), ("old", "precomputed")]
    assert config.rm.score_column == "rm_score_v1"  # the fusion's signal
