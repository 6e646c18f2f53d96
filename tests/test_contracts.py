"""The contracts new capabilities plug into, each proven by a plug-in that lives only in tests/:

- a reward backend registered in one line (fakes.py) runs through the score stage and every engine;
- a fusion in one file (toy_fusion.py) is chosen with --fusion and changes nothing else;
- stored settings follow one rule, so a new option changes no existing output's bytes;
- the layers import downward only, with no import circle, and no module outgrows 450 lines.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label
from shards import assert_same_files, shard_bytes
from fakes import FakeRewardModel, fake_score
from pipeline.config import build_config
from pipeline.stages.base import CounterSink, WorkerContext
from pipeline.stages.score import ScoreStage
from pipeline.tools.demo import synthetic_rollouts, write_synthetic_rollouts
from transforms.fuse import register_fusion
from transforms.rm import RewardModelConfig

REPO = Path(__file__).resolve().parents[1]
register_fusion("verifier_score", "toy_fusion:VerifierScoreFusion")


def three_rows() -> pa.Table:
    return synthetic_rollouts(3, responses_per_prompt=3, seed=5).select(["prompt_id", "prompt", "response"])


def test_a_backend_registered_in_one_line_scores_through_the_score_stage(tmp_path):
    table = three_rows()
    prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
    expected = [fake_score(p, r) for p, r in zip(prompts, responses)]
    loads = FakeRewardModel.loads
    for cache_dir, scored, cached in ((None, 3, 0), (str(tmp_path / "cache"), 3, 0), (str(tmp_path / "cache"), 0, 3)):
        stage = ScoreStage(RewardModelConfig(backend="fake", cache_dir=cache_dir))
        assert not stage.resources.accelerator  # the base class's default: no accelerator needed
        stage.setup(WorkerContext())
        sink = CounterSink()
        out = stage.process(table, sink)
        stage.close()
        # the same scores computed, or read back from the cache (float32 on the way)
        assert np.allclose(out.column("rm_score").to_pylist(), expected, atol=1e-6)
        assert out.column("rm_status").to_pylist() == ["ok"] * 3
        assert (sink.counts.get("rm_scored", 0), sink.counts.get("rm_cached", 0)) == (scored, cached)
    assert FakeRewardModel.loads == loads + 3  # loaded once per set-up, never per batch


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_fusion_in_one_file_is_chosen_by_name_on_every_engine(tmp_path, engine):
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 64, seed=8)
    manifest = label(tmp_path / "in.parquet", tmp_path / "out", rm_backend="fake", fusion="verifier_score", pairs=True,
                     engine=engine)
    data = pq.read_table(next((tmp_path / "out" / "data").glob("*.parquet")))
    assert data.schema.names[-2:] == ["toy_reward", "toy_status"] and "hero_reward" not in data.schema.names
    assert data.column("toy_reward").to_pylist() == [None if v is None else float(v)
                                                     for v in data.column("verifier_score").to_pylist()]
    assert manifest["fusion"] == {"name": "verifier_score", "reward_column": "toy_reward",
                                  "title": "the `verifier_score` fusion of both per prompt group"}
    assert set(manifest["status_counts"]["toy_status"]) <= {"verified", "unverified"}  # its own vocabulary, checked
    stored = json.loads(data.schema.metadata[b"herolabel"])
    assert stored["config"]["fusion"] == "verifier_score"  # a labeling option away from its default is stored
    pairs = pq.read_table(next((tmp_path / "out" / "pairs").glob("*.parquet")))
    assert pairs.num_rows and set(pairs.column("margin").to_pylist()) == {1.0}  # ranked by the toy reward
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    rewarded = data.num_rows - data.column("toy_reward").null_count
    assert report["reward_column"] == "toy_reward" and report["toy_reward"]["rows"] == rewarded
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `toy_reward` | double | the verifier's score |" in card and "`verifier_score` fusion" in card


# What every shard stores about the settings at their defaults, exactly as before options were declared with
# the stored-settings rule: an option added since must not appear here (stored=AT_NON_DEFAULT), or existing outputs
# would change bytes.
STORED_AT_DEFAULTS = {
    "verifier": {"timeout_s": 5, "hard_timeout_s": 30.0, "judge": "transforms.verifier:judge_response", "sources": ""},
    "rm": {"backend": "none", "model": None, "revision": None, "score_column": None, "max_length": 4096,
           "max_tokens_per_batch": 65536, "max_batch_size": 512, "device": "auto", "dtype": "auto",
           "truncation_side": "left", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9},
    "hero": {"alpha": 0.1, "beta": 0.1, "eps": 1e-06, "w_min": 0.4, "w_max": 3.0, "k": 6.0, "sigma_bar": None,
             "tie_placement": "bottom", "advantage_mode": "grpo", "on_bad_reference": "null"},
}


def test_stored_settings_at_their_defaults_are_unchanged_and_execution_options_never_stored():
    config = build_config({"input": "in", "output": "out", "rm_backend": "none"})
    assert config.labeling_dict() == STORED_AT_DEFAULTS
    assert list(config.labeling_dict()["verifier"]) == list(STORED_AT_DEFAULTS["verifier"])  # order is bytes too
    moved = build_config({"input": "in", "output": "out", "rm_backend": "none", "engine": "dask", "verify_ahead": 0,
                          "verifier_workers": 3, "verifier_task_size": 7, "batch_rows": 9, "progress": "on"})
    assert moved.labeling_dict() == STORED_AT_DEFAULTS  # where and how fast never decide a label


# The layers, lowest first: a module imports only from its own layer or lower ones (README: How it is built).
LAYERS = ("schemas", "transforms", "pipeline.engine_config", "pipeline.config", "pipeline.tools", "pipeline.storage",
          "pipeline.stages", "pipeline.plan", "pipeline.outputs", "pipeline.engines", "pipeline.fuse_output", "pipeline.run",
          "run_pipeline")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    paths = [*REPO.glob("schemas/**/*.py"), *REPO.glob("transforms/**/*.py"), *REPO.glob("pipeline/**/*.py"),
             REPO / "run_pipeline.py"]
    modules = {}
    for path in paths:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, at its top or inside a function (TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def _layer(module: str) -> int:
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def test_layers_import_downward_only_and_no_module_imports_itself_in_a_circle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # The check sees the whole tree and its edges (a wrong root or parser would pass vacuously).
    assert len(modules) > 50 and sum(map(len, graph.values())) > 100
    assert {"pipeline.stages.unit", "transforms.fuse"} <= graph["pipeline.plan"]
    assert "transforms.verify.registry" in graph["transforms.verify.pool"]
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert upward == [], upward
    # A package's own modules may import its __init__ only if the __init__ does not import them back.
    state: dict[str, int] = {}
    circles = []

    def visit(name: str, trail: list[str]):
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == [], circles


def test_no_module_outgrows_the_size_a_reader_can_hold():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("group_rows,batch_rows,unit_rows", [
    ((300,), 64, 128),  # one big row group: sub-units of two whole batches (128 rows), the last shorter
    ((40, 0, 300, 7), 64, 128),  # an empty row group yields no unit; small ones stay whole
    ((500,), 100, 64),  # a batch bigger than the unit size: a unit is still one whole batch
    ((128,), 64, 128),  # exactly one unit's worth: not split, the name has no part
])
def test_units_cover_every_row_once_in_whole_batches_under_deterministic_names(group_rows, batch_rows, unit_rows,
                                                                              monkeypatch):
    from types import SimpleNamespace

    from pipeline.stages import unit as units

    monkeypatch.setattr(units, "UNIT_ROWS", unit_rows)
    starts = tuple(int(sum(group_rows[:i])) for i in range(len(group_rows)))
    file = SimpleNamespace(index=3, url="f.parquet", row_group_starts=starts, row_group_rows=group_rows,
                           row_group_parts=None)
    made = units.units_of([file], batch_rows)
    for group, rows in enumerate(group_rows):
        parts = [u for u in made if u.row_group == group]
        covered = [r for u in parts for r in range(u.first_row, u.first_row + u.rows)]
        assert covered == list(range(starts[group], starts[group] + rows))  # every row of the group once, in order
        assert all(u.first_row - starts[group] == u.skip for u in parts)  # read from where it starts
        assert all(u.skip % batch_rows == 0 for u in parts)  # batches line up with an unsplit read
        if len(parts) == 1:
            assert parts[0].name == f"file-00003-rg-{group:05d}" and parts[0].part is None
        else:
            assert [u.name for u in parts] == [f"file-00003-rg-{group:05d}-part-{p:04d}" for p in range(len(parts))]
    assert units.units_of([file], batch_rows) == made  # the same names on every run


@pytest.mark.parametrize("group_rows,num_shards,expected", [
    # 1,000-row row groups at 10 buckets: joined while under 2,560 rows, so by three (the rest: two)
    ((1000,) * 5, 10, [(0, 3), (3, 2)]),
    # the 10M-row benchmark's 5,000-row row groups at 200 buckets: 11 (55,000 rows) a unit
    ((5000,) * 25, 200, [(0, 11), (11, 11), (22, 3)]),
    # one bucket: every row group of 5,000 rows already holds 256 rows a bucket, none joined
    ((5000,) * 3, 1, [(0, 1), (1, 1), (2, 1)]),
    # tiny row groups join up to the 256 rows a bucket; an empty one inside a run is read (it yields nothing)
    ((100, 0, 100, 100, 100), 1, [(0, 4), (4, 1)]),
    # never past UNIT_ROWS (65,536): 40,000 + 40,000 would be, so each stays alone at 1,000 buckets
    ((40_000, 40_000), 1000, [(0, 1), (1, 1)]),
    # a row group split into sub-units ends the run before it; the run after it starts anew
    ((1000, 1000, 70_000, 1000), 100, [(0, 2), (2, 1), (2, 1), (3, 1)]),
])
def test_small_row_groups_of_a_file_join_into_units_of_a_few_hundred_rows_a_bucket(group_rows, num_shards,
                                                                                   expected):
    from types import SimpleNamespace

    from pipeline.stages import unit as units

    starts = tuple(int(sum(group_rows[:i])) for i in range(len(group_rows)))
    file = SimpleNamespace(index=0, url="f.parquet", row_group_starts=starts, row_group_rows=group_rows,
                           row_group_parts=None)
    made = units.units_of([file], 4096, num_shards, min_part_rows=256, join_above_parts=0)
    assert [(u.row_group, u.row_groups) for u in made] == expected
    covered = [r for u in made for r in range(u.first_row, u.first_row + u.rows)]
    assert covered == list(range(sum(group_rows)))  # every row once, in file order
    assert all(u.rows <= units.UNIT_ROWS for u in made)
    assert len({u.name for u in made}) == len(made) and units.units_of([file], 4096, num_shards, 256, 0) == made
    # --min-part-rows 0: a unit per row group
    assert all(u.row_groups == 1 for u in units.units_of([file], 4096, num_shards, 0, 0))


@pytest.mark.parametrize("row_groups,num_shards,joined", [
    (2000, 200, True),  # the 10M benchmark's shape: 2,000 row groups x 200 buckets = 400k parts
    (200, 20, False),  # 1M rows of it: 4,000 parts, a unit per row group
    (400, 250, False),  # exactly 100,000 parts: not over the limit
])
def test_row_groups_join_only_in_a_job_of_over_100k_spill_parts(row_groups, num_shards, joined):
    from types import SimpleNamespace

    from pipeline.stages import unit as units

    sizes = (5000,) * row_groups
    file = SimpleNamespace(index=0, url="f.parquet", row_group_starts=tuple(range(0, 5000 * row_groups, 5000)),
                           row_group_rows=sizes, row_group_parts=None)
    made = units.units_of([file], 4096, num_shards, min_part_rows=256)
    assert (len(made) < row_groups) is joined


def test_a_sub_unit_reads_its_own_rows_numbered_as_in_the_file(tmp_path):
    from pipeline.stages.unit import WorkUnit

    table = synthetic_rollouts(300, seed=9)
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=300)
    read = []
    for skip in (0, 128, 256):
        rows = min(128, 300 - skip)
        unit = WorkUnit(0, str(tmp_path / "one.parquet"), 0, skip, rows, skip, skip // 128, rows)
        batches = list(unit.read(64))
        assert [offset for _, offset, _ in batches] == list(range(skip, skip + unit.rows, 64))  # file row numbers
        assert {group for group, _, _ in batches} == {0}
        read += [t for _, _, t in batches]
    assert pa.concat_tables(read).equals(table)


def test_small_row_groups_read_as_one_unit_number_rows_as_in_the_file(tmp_path):
    from pipeline.stages.unit import WorkUnit

    table = synthetic_rollouts(250, seed=9)
    pq.write_table(table, tmp_path / "small.parquet", row_group_size=50)  # five row groups of 50 rows
    unit = WorkUnit(0, str(tmp_path / "small.parquet"), 1, 50, 150, row_groups=3)  # row groups 1 to 3
    batches = list(unit.read(32))
    assert unit.name == "file-00000-rg-00001-00003"
    # Batches never cross a row group (each carries its own row group's cache locality).
    assert [(group, offset) for group, offset, _ in batches] == [
        (g, 50 * g + o) for g in (1, 2, 3) for o in (0, 32)]
    assert pa.concat_tables([t for _, _, t in batches]).equals(table.slice(50, 150))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_row_groups_split_into_sub_units_give_the_same_files(tmp_path, engine, monkeypatch):
    from pipeline.stages import unit as units

    table = synthetic_rollouts(300, seed=10)
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=300)
    common = dict(rm_backend="fake", engine=engine, batch_rows=32, rows_per_shard=100, pairs=True)
    label(tmp_path / "one.parquet", tmp_path / "whole", **common)
    monkeypatch.setattr(units, "UNIT_ROWS", 64)  # 300 rows: four sub-units of 64 and one of 44
    from pipeline.plan import make_plan

    plan = make_plan(build_config({"input": str(tmp_path / "one.parquet"), "output": str(tmp_path / "split"),
                                   **common}), "test")
    assert [u.rows for u in plan.units] == [64, 64, 64, 64, 44]
    label(tmp_path / "one.parquet", tmp_path / "split", **common)
    for kind in ("data", "pairs"):
        assert_same_files(shard_bytes(tmp_path / "split", kind), shard_bytes(tmp_path / "whole", kind))


@pytest.mark.slow
def test_a_wide_row_group_is_cut_by_exploded_rows_and_gives_the_same_files(tmp_path, monkeypatch):
    from pipeline.plan import make_plan
    from pipeline.stages import unit as units

    long = synthetic_rollouts(320, responses_per_prompt=8, seed=11)
    first = {name: long.column(name).to_pylist()[::8] for name in ("prompt_id", "prompt", "reference")}
    wide = pa.table({**first, "responses": [long.column("response").to_pylist()[i:i + 8] for i in range(0, 320, 8)]})
    pq.write_table(wide, tmp_path / "wide.parquet", row_group_size=40)  # one row group: 40 prompts, 320 rows
    common = dict(preset="wide", rm_backend="fake", batch_rows=8, rows_per_shard=100)
    label(tmp_path / "wide.parquet", tmp_path / "whole", **common)
    monkeypatch.setattr(units, "UNIT_ROWS", 100)  # 8 prompts (64 rows) a batch: one batch a sub-unit
    plan = make_plan(build_config({"input": str(tmp_path / "wide.parquet"), "output": str(tmp_path / "split"),
                                   **common}), "test")
    assert [(u.first_row, u.rows, u.skip, u.read_rows) for u in plan.units] == [
        (64 * i, 64, 8 * i, 8) for i in range(5)]  # long-form rows, raw rows read
    label(tmp_path / "wide.parquet", tmp_path / "split", **common)
    assert_same_files(shard_bytes(tmp_path / "split"), shard_bytes(tmp_path / "whole"))
