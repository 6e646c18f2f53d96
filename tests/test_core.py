"""The engine-neutral core on three-row tables: no engine, no cluster."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages.group import PartIndex, SpillWriter, UnitParts, load_parts, split_by_bucket
from pipeline.config import EngineConfig, build_config
from pipeline.stages.write import fuse_and_write, write_errors
from pipeline.plan import make_plan
from pipeline.stages.base import CounterSink, SharedStages, WorkerContext
from pipeline.stages.unit import UnitTables, run_stages
from pipeline.stages.verify import VerifyStage
from schemas.rollouts import ORDER, STATUS_VOCABULARIES, InputContract, bucket_of, validate_batch
from transforms.fuse import make_fusion
from transforms.fuse.hero import HeroConfig
from transforms.verify import VerifierConfig

THREE_ROWS = pa.table({
    "prompt_id": ["p1", "p1", "p2"],
    "prompt": ["What is 1+1?", "What is 1+1?", "What is 2+2?"],
    "response": ["The answer is $\\boxed{2}$.", "It is \\boxed{3}", "\\boxed{4}"],
    "reference": ["2", "2", "4"],
    "score": [0.5, -1.0, 2.0],
})


def contract() -> InputContract:
    return InputContract.from_file_schemas([THREE_ROWS.schema])


def scored_rows() -> pa.Table:
    """The three rows as the group stage sees them: validated, verified and scored."""
    valid, _ = validate_batch(THREE_ROWS, contract(), source_file="f", file_index=0, row_offset=0)
    return (valid.append_column("verifier_score", pa.array([1.0, 0.0, 1.0], pa.float32()))
            .append_column("verifier_status", pa.array(["ok", "ok", "ok"]))
            .append_column("extracted_answer", pa.array(["2", "3", "4"]))
            .append_column("verifier_rule", pa.array(["extraction", "extraction", "extraction"]))
            .append_column("rm_score", pa.array([0.5, -1.0, 2.0], pa.float32()))
            .append_column("rm_status", pa.array(["ok", "ok", "ok"])))


@pytest.mark.parametrize("views", [False, True])
def test_split_by_bucket_keeps_groups_whole_and_rows_once(views):
    table = scored_rows()
    pieces = list(split_by_bucket(table, 7, views=views))
    assert sorted(sum((p.column("prompt_id").to_pylist() for _, p in pieces), [])) == ["p1", "p1", "p2"]
    for bucket, piece in pieces:
        assert set(bucket_of(piece.column("prompt_id"), 7)) == {bucket}
    assert [b for b, _ in pieces] == sorted(b for b, _ in pieces)


def test_split_by_bucket_views_hold_the_same_rows_and_compact_pieces_pickle_alone():
    big = pa.concat_tables([scored_rows()] * 2000).combine_chunks()  # 6,000 rows, 2 prompt ids
    compact, views = list(split_by_bucket(big, 50)), list(split_by_bucket(big, 50, views=True))
    assert [(b, t.to_pylist()) for b, t in compact] == [(b, t.to_pylist()) for b, t in views]
    # An engine shuffle pickles the pieces: a compact one carries its own rows, not the whole unit's.
    smallest = min(compact, key=lambda piece: piece[1].num_rows)[1]
    assert len(pickle.dumps(smallest)) < len(pickle.dumps(big)) * smallest.num_rows / big.num_rows * 1.5


def test_a_unit_spills_one_object_whose_byte_ranges_read_back_each_bucket(tmp_path):
    table = scored_rows()
    writer = SpillWriter(str(tmp_path), 2, table.schema, name="unit-a", flush_rows=1)
    writer.add(table.slice(0, 2))
    writer.add(table.slice(2))
    written = writer.close()
    objects = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(objects) == 1 and objects[0].name.startswith("unit-a-")  # one object for every bucket
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary renamed into place
    for bucket, part in written.items():  # each range is that bucket's rows, and only those
        rows = load_parts([part])
        assert set(bucket_of(rows.column("prompt_id"), 2)) == {bucket}
    read = load_parts(written.values())
    assert {column.num_chunks for column in read.columns} == {1}  # sorts over many chunks are slow
    back = read.sort_by([("prompt_id", "ascending"), (ORDER, "ascending")])
    assert back.equals(table.sort_by([("prompt_id", "ascending"), (ORDER, "ascending")]))
    # A retried task with the same rows in the same batches writes the same object: nothing added.
    again = SpillWriter(str(tmp_path), 2, table.schema, name="unit-a", flush_rows=1)
    again.add(table.slice(0, 2))
    again.add(table.slice(2))
    assert again.close() == written
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == objects
    # One whose rows differ (other scores) writes another object, and its parts name that one.
    changed = table.set_column(table.schema.get_field_index("rm_score"), "rm_score",
                               pa.array([9.0] * table.num_rows, pa.float32()))
    other = SpillWriter(str(tmp_path), 2, table.schema, name="unit-a")
    other.add(changed)
    parts = other.close()
    assert set(parts) == set(written) and not set(parts.values()) & set(written.values())
    assert load_parts(parts.values()).column("rm_score").to_pylist() == [9.0] * table.num_rows
    assert load_parts(written.values()).num_rows == 3  # the first object is intact


def test_a_spill_file_per_bucket_from_an_earlier_version_still_reads(tmp_path):
    """A resumed run may find markers that name whole Parquet files (one per unit and bucket)."""
    table = scored_rows()
    pq.write_table(table, tmp_path / "file-00000-rg-00000.parquet")
    assert load_parts([str(tmp_path / "file-00000-rg-00000.parquet")]).equals(table)


def test_parquet_byte_ranges_from_an_earlier_version_still_read_beside_ipc_ones(tmp_path):
    """Markers written before spill parts were IPC streams name byte ranges of Parquet files back to back."""
    table = scored_rows()
    first, second = table.slice(0, 1), table.slice(1)
    blobs = []
    for piece in (first, second):
        stream = pa.BufferOutputStream()
        pq.write_table(piece, stream, compression="lz4")
        blobs.append(stream.getvalue().to_pybytes())
    (tmp_path / "old-unit.parquet").write_bytes(blobs[0] + blobs[1])
    old = [f"{tmp_path / 'old-unit.parquet'}#0-{len(blobs[0])}",
           f"{tmp_path / 'old-unit.parquet'}#{len(blobs[0])}-{len(blobs[0]) + len(blobs[1])}"]
    writer = SpillWriter(str(tmp_path / "new"), 1, table.schema, name="unit-b")
    writer.add(second)
    new = list(writer.close().values())
    assert new[0].split("#")[0].endswith(".arrows")
    assert load_parts(old, ["prompt_id", "rm_score"]).equals(table.select(["prompt_id", "rm_score"]))
    order = [("prompt_id", "ascending"), (ORDER, "ascending")]
    assert load_parts([old[0], *new]).sort_by(order).equals(table.sort_by(order))  # both formats in one bucket


# Parts as completion markers name them, one dict per unit: each case says what a resumed or fresh unit holds.
UNIT_PART_CASES = [
    # a unit of this version: one object, its buckets' byte ranges back to back
    {0: "/s/spill/file-00000-rg-00000-ab.arrows#0-100", 3: "/s/spill/file-00000-rg-00000-ab.arrows#100-250"},
    # an earlier version's unit: a whole Parquet file per bucket
    {1: "/s/file-00001-rg-00000/bucket-00001.parquet", 2: "/s/file-00001-rg-00000/bucket-00002.parquet"},
    # a URL that holds '#' and digits (an object store key): only the last '#START-END' is the range
    {5: "s3://b/run#7/spill/u-1-2.arrows#0-9"},
    # a unit with no valid rows spills nothing
    {},
]


@pytest.mark.parametrize("parts", UNIT_PART_CASES)
def test_unit_parts_keep_every_part_as_its_marker_names_it(parts):
    compact = UnitParts.of(parts)
    assert dict(compact.items()) == parts and len(compact) == len(parts)
    assert [b for b, _ in compact.items()] == sorted(parts)  # bucket order
    again = pickle.loads(pickle.dumps(compact))  # what a runner or a cluster moves
    assert again == compact and dict(again.items()) == parts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 40), st.integers(1, 10_000), max_size=12), max_size=30))
def test_the_part_index_gives_each_bucket_the_parts_a_list_per_bucket_would(units):
    """Property: looking a bucket up in the index gives exactly the parts that grouping every unit's parts
    by bucket gives, in unit order, and lists exactly the buckets that have parts."""
    expected: dict[int, list[str]] = {}
    compact = []
    for u, sizes in enumerate(units):
        parts, start = {}, 0
        for bucket, size in sorted(sizes.items()):
            parts[bucket] = f"/spill/unit-{u}.arrows#{start}-{start + size}" if u % 3 else f"/old/{u}/{bucket}.parquet"
            start += size
            expected.setdefault(bucket, []).append(parts[bucket])
        compact.append(UnitParts.of(parts))
    index = pickle.loads(pickle.dumps(PartIndex(compact)))
    assert dict(index.items()) == dict(sorted(expected.items()))
    assert index.buckets.tolist() == sorted(expected) and len(index) == len(expected)
    assert index.parts(41) == []  # a bucket no unit has rows of


def test_sigma_bar_does_not_depend_on_partial_order():
    hero = make_fusion("hero", {"hero": HeroConfig()}, rm_scores=True)
    partials = [(0.1, 1), (1e16, 1), (-1e16, 1), (0.2, 2)]
    assert hero.combine(partials) == hero.combine(reversed(partials)) == pytest.approx(0.3 / 5)
    assert hero.combine([]) == 0.0


def test_fuse_and_write_writes_one_sorted_shard_and_counts(tmp_path):
    rows = tmp_path / "in.parquet"
    pq.write_table(THREE_ROWS, rows)
    plan = make_plan(build_config({"input": str(rows), "output": str(tmp_path / "out"), "rm_score_column": "score"}),
                     "test")
    table = scored_rows()
    sink = CounterSink()
    # Parts in reverse arrival order give the same shard: rows are sorted by (prompt_id, input order).
    url, count = fuse_and_write(plan, 0, [table.slice(2), table.slice(0, 2)], 0.5, sink)
    shard = pq.read_table(url)
    assert count == 3 and sink.counts["written"] == 3 and "fuse_ms" in sink.counts
    assert shard.column("prompt_id").to_pylist() == ["p1", "p1", "p2"]
    assert shard.column("hero_normalized").to_pylist() == pytest.approx([0.9, -0.1, 0.9])
    assert ORDER not in shard.column_names
    metadata = json.loads(shard.schema.metadata[b"herolabel"])
    assert metadata["sigma_bar"] == 0.5 and metadata["shard"] == 0
    assert set(metadata["config"]) == {"verifier", "rm", "hero"}  # labeling settings only, no paths


def test_write_errors_sorts_by_source_row(tmp_path):
    rows = tmp_path / "in.parquet"
    pq.write_table(THREE_ROWS, rows)
    plan = make_plan(build_config({"input": str(rows), "output": str(tmp_path / "out"), "rm_backend": "none"}), "t")
    bad = THREE_ROWS.set_column(2, "response", pa.array([None, None, None], pa.string()))
    _, late = validate_batch(bad.slice(2), contract(), source_file="f", file_index=0, row_offset=2)
    _, early = validate_batch(bad.slice(0, 2), contract(), source_file="f", file_index=0, row_offset=0)
    url, count = write_errors(plan, 0, [late, early])
    assert count == 3
    assert pq.read_table(url).column("source_row").to_pylist() == [0, 1, 2]


def test_a_verify_stage_with_a_cache_starts_its_processes_at_the_first_miss_only(tmp_path):
    # A night whose rows are all cached starts no verifier process (about 85 MB each); a miss starts them.
    config = VerifierConfig(num_workers=1, timeout_s=5, hard_timeout_s=20, cache_dir=str(tmp_path / "cache"))
    valid, _ = validate_batch(THREE_ROWS, contract(), source_file="f", file_index=0, row_offset=0)
    verdicts = ["verifier_score", "verifier_status", "extracted_answer", "verifier_rule"]
    labelled = []
    for night in ("first", "second"):
        stage, sink = VerifyStage(config), CounterSink()
        stage.setup(WorkerContext())
        try:
            assert not stage.pool._workers  # nothing started before a row is looked up
            labelled.append(stage.process(valid, sink).select(verdicts))
            started = len(stage.pool._workers)
        finally:
            stage.close()
        if night == "first":  # every row missed: verified by the one process
            assert (started, sink.counts["verified"]) == (1, 3)
        else:  # every row served by the cache: no process, nothing verified
            assert (started, sink.counts.get("verified", 0), sink.counts["verifier_cached"]) == (0, 0, 3)
    assert labelled[0].column("verifier_score").to_pylist() == [1.0, 0.0, 1.0]
    assert labelled[1].equals(labelled[0])


def test_stages_run_ahead_in_order_and_within_the_bound():
    verify = VerifyStage(VerifierConfig(num_workers=1, timeout_s=1, hard_timeout_s=20))
    verify.setup(WorkerContext())
    valid, _ = validate_batch(THREE_ROWS, contract(), source_file="f", file_index=0, row_offset=0)
    started = []

    class Counting:  # the real verifier, counting the batches it has started
        name, resources = "verify", verify.resources

        def process(self, table, sink):
            started.append(table.column("prompt_id")[0].as_py())
            return verify.process(table, sink)

    class Scoring:  # the next stage: how far verification had run when each batch arrived
        name, resources = "score", verify.resources
        seen: list[int] = []

        def process(self, table, sink):
            self.seen.append(len(started))
            return table

    try:
        for depth in (0, 2):
            started.clear()
            scoring = Scoring()
            scoring.seen = []
            sink = CounterSink()
            unit = UnitTables(None, [valid.slice(i, 1) for i in range(3)])
            out = run_stages([Counting(), scoring], unit, sink, ahead=depth)
            assert [t.column("prompt_id")[0].as_py() for t in out.tables] == ["p1", "p1", "p2"]  # input order
            assert [t.column("verifier_score")[0].as_py() for t in out.tables] == [1.0, 0.0, 1.0]
            # batch i reaches the next stage after its own verification, at most `depth` batches ahead
            assert all(i + 1 <= seen <= i + 1 + depth for i, seen in enumerate(scoring.seen)), scoring.seen
            assert sink.counts["verified"] == 3  # counts made on the background thread reach the caller's sink
            assert ("score_wait_ms" in sink.counts) == bool(depth)
    finally:
        verify.close()


def test_shared_stages_set_up_once_and_close_with_the_last_user():
    class Probe:
        name = "probe"

        def __init__(self, config):
            self.config = config
            self.setups = self.closes = 0

        def setup(self, context):
            self.setups += 1

        def close(self):
            self.closes += 1

    shared = SharedStages()
    first = shared.acquire(Probe("a"), WorkerContext())
    second = shared.acquire(Probe("a"), WorkerContext())
    other = shared.acquire(Probe("b"), WorkerContext())  # another config: its own instance
    assert first is second and other is not first and first.setups == 1
    probe = Probe("a")
    assert shared.acquire(probe, WorkerContext()) is not probe and probe.setups == 0  # the spec stays unset
    shared.release(first)
    shared.release(first)
    assert first.closes == 0
    shared.release(second)
    assert first.closes == 1 and other.closes == 0
    shared.close_all()
    assert other.closes == 1

    class FailsOnce(Probe):
        failures = 0

        def setup(self, context):
            if FailsOnce.failures == 0:
                FailsOnce.failures += 1
                raise OSError("model file not there yet")
            super().setup(context)

    with pytest.raises(OSError):
        shared.acquire(FailsOnce("c"), WorkerContext())
    retried = shared.acquire(FailsOnce("c"), WorkerContext())  # a failed set-up is not cached
    assert retried.setups == 1


def test_verifier_workers_divide_the_host_cores():
    config = VerifierConfig()  # num_workers unset: resolved where the stage runs
    assert config.resolved_workers(processes_on_host=10_000) == 1
    assert config.resolved_workers(1) >= config.resolved_workers(2) >= 1
    assert VerifierConfig(num_workers=3).resolved_workers(8) == 3


@pytest.mark.parametrize("value,parsed", [
    ("GPU=1", {"GPU": 1.0}),  # the default
    (" gpu = 0.5 ", {"gpu": 0.5}),  # fractional amounts let several tasks share one device
    ("nvidia.com-a100=2", {"nvidia.com-a100": 2.0}),
])
def test_dask_resource_parses(value, parsed):
    assert EngineConfig(dask_resource=value).resource_requirement() == parsed


@pytest.mark.parametrize("options,message", [
    ({"dask_resource": "GPU"}, "--dask-resource must look like NAME=AMOUNT"),  # no amount
    ({"dask_resource": "GPU=0"}, "--dask-resource must look like NAME=AMOUNT"),  # nothing required
    ({"dask_scheduler": "tcp://h:8786"}, "--dask-scheduler needs --engine=dask"),  # default engine is beam
    ({"engine": "spark"}, "--engine must be one of"),
    ({"verify_ahead": -1}, "--verify-ahead must be an integer >= 0"),
    ({"rm_accelerator": "nvidia-l4"}, "--rm-accelerator must look like"),
])
def test_engine_options_are_validated_by_name(options, message):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_config({"input": "a", "output": "b", "rm_backend": "none", **options})


def test_beam_flags_are_refused_with_the_dask_engine():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="--runner DataflowRunner"):
        build_config({"input": "a", "output": "b", "rm_backend": "none", "engine": "dask"},
                     ("--runner", "DataflowRunner"))


def test_status_vocabularies_are_the_contract():
    assert STATUS_VOCABULARIES["verifier_status"] == ("ok", "no_answer", "no_reference", "bad_reference", "timeout",
                                                      "error")
    assert STATUS_VOCABULARIES["rm_status"] == ("ok", "truncated", "missing", "error", "skipped")
    assert STATUS_VOCABULARIES["hero_status"] == ("ok", "rm_only", "no_reference", "bad_reference", "rm_missing",
                                                  "rm_disabled")


@pytest.mark.parametrize("flags,processes", [
    ([], 1),  # in-process FnApiRunner: one process, its threads share one pool
    (["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"], 2),  # two local SDK processes
    (["--runner", "DataflowRunner", "--project", "p-123456", "--region", "r", "--temp_location", "gs://b/t"],
     WorkerContext.ONE_PER_CORE),  # Dataflow starts one SDK process per vCPU by default
    (["--runner", "DataflowRunner", "--project", "p-123456", "--region", "r", "--temp_location", "gs://b/t",
      "--experiments=no_use_multiple_sdk_containers"], 1),  # one SDK process per VM
    (["--runner", "FlinkRunner", "--sdk_worker_parallelism", "4"], 4),  # portable runner, 4 SDK workers per host
    (["--runner", "SparkRunner"], 1),
])
def test_beam_tells_stages_how_many_processes_share_a_host(flags, processes):
    from pipeline.engines.beam import check_beam_args, worker_context

    context = worker_context(check_beam_args(tuple(flags)))
    assert context.processes_on_host == processes
    assert context.host_processes(cores=16) == (16 if processes == WorkerContext.ONE_PER_CORE else processes)


def test_pipeline_runs_refuse_in_thread_verification():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="--verifier-workers must be >= 1 in a pipeline run"):
        build_config({"input": "a", "output": "b", "rm_backend": "none", "verifier_workers": 0})


@pytest.mark.parametrize("prompt_ids,samples,orders,kept,duplicates,originals", [
    # the second copy of (p1, 0) is the duplicate, whatever the arrival order
    (["p1", "p1", "p2"], [0, 0, 0], [5, 2, 3], [2, 3], [0], [1]),
    # a null sample_index is never a duplicate
    (["p1", "p1", "p1"], [None, None, 1], [1, 2, 3], [1, 2, 3], [], []),
    # three copies: the two later ones both point at the first
    (["p", "p", "p"], [4, 4, 4], [9, 1, 5], [1], [2, 0], [1, 1]),
    # same sample_index in different prompts: no duplicates
    (["a", "b"], [0, 0], [1, 2], [1, 2], [], []),
])
def test_split_duplicates(prompt_ids, samples, orders, kept, duplicates, originals):
    from schemas.rollouts import split_duplicates

    table = pa.table({"prompt_id": prompt_ids, "sample_index": pa.array(samples, pa.int64()),
                      ORDER: pa.array(orders, pa.int64())})
    keep, dup, orig = split_duplicates(table)
    assert sorted(keep.column(ORDER).to_pylist()) == kept
    assert list(dup) == duplicates and list(orig) == originals
