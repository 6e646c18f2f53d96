"""The verdict cache and the content cache under it (--cache-dir): keys, namespaces, localities, compaction
while another reader reads, and incremental runs on every engine whose data/ equals a full run's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label, shared_file
from shards import assert_same_files, shard_bytes
from pipeline.config import ConfigError, build_config
from pipeline.storage.content_cache import (ContentCache, Locality, compact, content_keys, file_counts,
                                            unit_locality)
from pipeline.storage.verdict_cache import cacheable_verdicts, verdict_keys, verifier_identity
from pipeline.tools.demo import synthetic_rollouts
from transforms.verify import VerifierConfig

REPO = Path(__file__).resolve().parents[1]
VALUES = pa.schema([("value", pa.int64())])


def values(numbers) -> pa.Table:
    return pa.table({"value": pa.array(list(numbers), pa.int64())})


def rows(**columns) -> pa.Table:
    base = {"prompt": ["What is 1+1?"], "response": ["\\boxed{2}"], "reference": ["2"], "data_source": ["gsm8k"]}
    return pa.table({**base, **{k: [v] for k, v in columns.items()}})


@pytest.mark.parametrize("change", [
    {"response": "\\boxed{2} "},  # a trailing space is another response (the verifier may read it otherwise)
    {"reference": "3"},  # another gold answer
    {"prompt": "What is 2+0?"},  # the same answer to another question: a miss, never a borrowed verdict
    {"prompt": [{"role": "user", "content": "What is 2+0?"}]},  # a chat's question is its last user message
    {"data_source": "mmlu"},  # another source maps to another verifier below
])
def test_verdict_keys_tell_rows_apart(change):
    config = VerifierConfig(sources="mmlu=choice")
    base = verdict_keys(rows(), config)[0]
    assert verdict_keys(rows(**change), config)[0] != base
    assert verdict_keys(rows(), config)[0] == base  # and are stable


def test_verdict_keys_ignore_what_the_verifier_does_not_see():
    config = VerifierConfig()
    base = verdict_keys(rows(), config)[0]
    assert verdict_keys(rows(reference=" 2\n"), config)[0] == base  # the pool strips the reference
    assert verdict_keys(rows(data_source="mmlu"), config)[0] == base  # unmapped sources all use "math"
    assert verdict_keys(rows(prompt=[{"role": "user", "content": "What is 1+1?"}]), config)[0] == base


def test_content_keys_keep_none_and_empty_and_boundaries_apart():
    a, b, c, d = content_keys([None, "", "ab", "a"], ["x", "x", "c", "bc"])
    assert len({a, b}) == 2 and c != d


def test_the_namespace_follows_the_verifier_source_settings_and_plugins(tmp_path, monkeypatch):
    base = verifier_identity(VerifierConfig())
    assert base == verifier_identity(VerifierConfig())
    assert set(base["libraries"]) == {"math-verify", "latex2sympy2_extended", "sympy"}
    assert all(base["libraries"].values())  # the versions are read, not left out
    for change in ({"timeout_s": 7}, {"hard_timeout_s": 40.0}, {"sources": "gsm8k=exact"}):
        assert verifier_identity(VerifierConfig(**change)) != base, change
    # Settings that change no verdict do not split the cache.
    assert verifier_identity(VerifierConfig(num_workers=3, task_size=8, cache_dir="x")) == base
    # A plug-in verifier is keyed by its module's source: an edited rule is a new namespace.
    plugin = tmp_path / "my_rules.py"
    plugin.write_text("def judge(reference, response, timeout_s):\n    return 1.0, 'ok', response\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = VerifierConfig(sources="mine=my_rules:judge")
    first = verifier_identity(config)
    plugin.write_text("def judge(reference, response, timeout_s):\n    return 0.0, 'ok', response\n")
    assert verifier_identity(config)["plugins"] != first["plugins"]
    # The built-in verifier's own source is in the identity (its rules change without a version).
    assert len(base["builtin_source_sha256"]) == 64


def test_only_verdicts_and_missing_references_are_cached():
    table = pa.table({"verifier_status": ["ok", "no_answer", "no_reference", "timeout", "error", "bad_reference"]})
    # A timeout or error may pass next time; a bad reference may be a reference whose parse timed out.
    assert cacheable_verdicts(table).tolist() == [True, True, True, False, False, False]


def test_store_and_lookup_by_locality(tmp_path):
    cache = ContentCache(str(tmp_path), {"test": 1}, VALUES)
    keys = content_keys([str(i) for i in range(10)])
    here, there = Locality("unit-a"), Locality("unit-b")
    cache.store(keys[:6], values(range(6)), here)
    reader = ContentCache(str(tmp_path), {"test": 1}, VALUES)
    hit, found = reader.lookup(keys, here)
    assert hit.tolist() == [True] * 6 + [False] * 4
    assert found.column("value").to_pylist() == list(range(6))
    # Another locality does not read this one's entries: a unit reads its own, never the whole cache.
    assert not reader.lookup(keys, there)[0].any()
    # Another namespace (identity) sees nothing.
    assert not ContentCache(str(tmp_path), {"test": 2}, VALUES).lookup(keys, here)[0].any()
    # Entries stored later in the same worker are seen by the unit's later batches.
    cache.store(keys[6:8], values([60, 70]), here)
    hit, found = cache.lookup(keys[5:9], here)
    assert hit.tolist() == [True, True, True, False] and found.column("value").to_pylist() == [5, 60, 70]


def test_a_location_edited_in_place_is_served_through_its_alias_and_refiled(tmp_path):
    keys = content_keys([str(i) for i in range(8)])
    before = unit_locality("footer-1", "s3://bucket/day.parquet", 0, None)
    after = unit_locality("footer-2", "s3://bucket/day.parquet", 0, None)
    moved = unit_locality("footer-1", "s3://other/day.parquet", 0, None)
    assert before.alias == after.alias and before.name != after.name
    assert moved.name == before.name  # a copied or renamed file keeps its content's locality
    ContentCache(str(tmp_path), {"t": 1}, VALUES).store(keys[:6], values(range(6)), before)
    # The edited file: its unchanged rows hit through the alias...
    hit, found = ContentCache(str(tmp_path), {"t": 1}, VALUES).lookup(keys, after)
    assert hit.tolist() == [True] * 6 + [False] * 2 and found.column("value").to_pylist() == list(range(6))
    # ...and are filed under the new locality, so the next run finds them there even once the alias moves on.
    segments = list((tmp_path / ContentCache(str(tmp_path), {"t": 1}, VALUES).directory.rsplit("/", 1)[-1]
                     / "segments" / after.name).glob("*.parquet"))
    assert segments
    assert ContentCache(str(tmp_path), {"t": 1}, VALUES).lookup(keys, Locality(after.name))[0].sum() == 6


def test_compaction_merges_each_locality_and_keeps_every_entry(tmp_path):
    cache = ContentCache(str(tmp_path), {"t": 1}, VALUES)
    keys = content_keys([str(i) for i in range(100)])
    for start in range(0, 100, 10):  # ten batches, one segment each
        cache.store(keys[start:start + 10], values(range(start, start + 10)), Locality("u"))
    cache.store(keys[:5], values(range(5)), Locality("v"))
    assert file_counts(str(tmp_path)) == {Path(cache.directory).name: {"segments": 11, "aliases": 0}}
    counts = compact(str(tmp_path), min_files=2)
    assert counts == {"namespaces": 1, "localities": 2, "files_before": 11, "files_after": 2, "retired": 10,
                      "deleted": 0}
    hit, found = ContentCache(str(tmp_path), {"t": 1}, VALUES).lookup(keys, Locality("u"))
    assert hit.all() and found.column("value").to_pylist() == list(range(100))
    # The merged-away segments stay readable until a later compaction finds them retired long enough.
    assert file_counts(str(tmp_path))[Path(cache.directory).name]["segments"] == 12  # 11 + the merged one
    again = compact(str(tmp_path))
    assert (again["files_after"], again["retired"], again["deleted"]) == (2, 0, 0)  # idempotent; still waiting
    assert compact(str(tmp_path), retire_after_s=0)["deleted"] == 10
    assert file_counts(str(tmp_path))[Path(cache.directory).name]["segments"] == 2
    hit, found = ContentCache(str(tmp_path), {"t": 1}, VALUES).lookup(keys, Locality("u"))
    assert hit.all() and found.column("value").to_pylist() == list(range(100))


def test_compaction_is_safe_while_another_reader_reads(tmp_path):
    # A writer adds segments and a compactor merges them (deleting what it retired 0.2 s before) while fresh
    # readers (each reads the locality anew) look up every stored key: no reader ever misses a stored key or
    # fails on a merged-away segment. Deleting at once made a reader listing mid-merge miss both (readdir is
    # not a snapshot): about 1 run in 8 here.
    keys = content_keys([str(i) for i in range(400)])
    writer = ContentCache(str(tmp_path), {"t": 1}, VALUES)
    writer.store(keys[:20], values(range(20)), Locality("u"))
    stored = [20]
    problems = []
    stop = threading.Event()

    def write_and_compact():
        for start in range(20, 400, 20):
            writer.store(keys[start:start + 20], values(range(start, start + 20)), Locality("u"))
            stored[0] = start + 20
            compact(str(tmp_path), retire_after_s=0.2)
            time.sleep(0.02)
        stop.set()

    def read():
        reads = 0
        while not stop.is_set() or reads < 5:
            known = stored[0]
            try:
                hit, _ = ContentCache(str(tmp_path), {"t": 1}, VALUES).lookup(keys[:known], Locality("u"))
                if not hit.all():
                    problems.append(f"missed {int((~hit).sum())} of {known}")
            except Exception as exc:  # noqa: BLE001 - collected: the assertion below reports it
                problems.append(repr(exc))
            reads += 1

    threads = [threading.Thread(target=write_and_compact), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert problems == []
    assert compact(str(tmp_path), retire_after_s=0)["deleted"] >= 1
    assert file_counts(str(tmp_path))[Path(writer.directory).name]["segments"] == 1


# --- pipeline runs -------------------------------------------------------------------------------------------

def with_scores(table: pa.Table) -> pa.Table:
    return table.append_column("score", pa.array([float((i * 7) % 11) for i in range(table.num_rows)]))


def renamed_prompts(table: pa.Table, prefix: str) -> pa.Table:
    ids = [f"{prefix}{p}" for p in table.column("prompt_id").to_pylist()]
    return table.set_column(table.schema.get_field_index("prompt_id"), "prompt_id", pa.array(ids))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_an_incremental_run_verifies_only_new_rows_and_writes_a_full_runs_bytes(tmp_path, engine):
    night1, night2 = tmp_path / "night1", tmp_path / "night2"
    night1.mkdir()
    pq.write_table(with_scores(synthetic_rollouts(480, seed=31, missing_reference_every=9)),
                   night1 / "a.parquet", row_group_size=160)
    options = dict(rm_score_column="score", engine=engine, batch_rows=64)
    cache = str(tmp_path / "cache")
    first = label(night1, tmp_path / "out1", cache_dir=cache, **options)
    assert first["verifier_rows"] == {"verified": 480, "cached": 0}
    rerun = label(night1, tmp_path / "rerun", cache_dir=cache, **options)
    assert rerun["verifier_rows"] == {"verified": 0, "cached": 480}  # unchanged rows: nothing verified
    assert rerun["engine"]["counters"].get("verified", 0) == 0
    assert_same_files(shard_bytes(tmp_path / "rerun"), shard_bytes(tmp_path / "out1"))
    # Night 2: yesterday's file under another directory (its content locality still holds its entries) and a
    # new file that sorts first (file positions shift: keys do not depend on them).
    night2.mkdir()
    shutil.copy(night1 / "a.parquet", night2 / "a.parquet")
    pq.write_table(with_scores(renamed_prompts(synthetic_rollouts(40, seed=32), "new-")), night2 / "0-new.parquet")
    grown = label(night2, tmp_path / "out2", cache_dir=cache, **options)
    assert grown["verifier_rows"] == {"verified": 40, "cached": 480}
    label(night2, tmp_path / "full2", **options)
    assert_same_files(shard_bytes(tmp_path / "out2"), shard_bytes(tmp_path / "full2"))
    # Night 3: one row of yesterday's file edited in place (an edited row is a new row; the file's other rows
    # are served through the location's alias), and the full run of that input without a cache as reference.
    table = pq.read_table(night2 / "a.parquet")
    responses = table.column("response").to_pylist()
    responses[5] += " (edited)"
    pq.write_table(table.set_column(table.schema.get_field_index("response"), "response", pa.array(responses)),
                   night2 / "a.parquet", row_group_size=160)
    edited = label(night2, tmp_path / "out3", cache_dir=cache, **options)
    assert edited["verifier_rows"] == {"verified": 1, "cached": 519}
    reference = label(night2, tmp_path / "full", **options)
    assert reference["verifier_rows"] == {"verified": 520, "cached": 0}
    assert_same_files(shard_bytes(tmp_path / "out3"), shard_bytes(tmp_path / "full"))
    assert edited["engine"]["cache_compaction"]["files_after"] <= edited["engine"]["cache_compaction"]["files_before"]


@pytest.mark.slow
def test_a_file_rewritten_in_place_keeps_its_unchanged_rows_cached(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    table = with_scores(synthetic_rollouts(200, seed=33))
    pq.write_table(table, source / "day.parquet")
    cache = str(tmp_path / "cache")
    options = dict(rm_score_column="score", batch_rows=50, cache_dir=cache)
    label(source, tmp_path / "out1", **options)
    # The same path, rewritten with 10 more rows at the end (its footer, so its content locality, changes).
    extra = with_scores(renamed_prompts(synthetic_rollouts(10, seed=34), "more-"))
    pq.write_table(pa.concat_tables([table, extra]), source / "day.parquet")
    second = label(source, tmp_path / "out2", **options)
    assert second["verifier_rows"] == {"verified": 10, "cached": 200}
    third = label(source, tmp_path / "out3", **options)  # filed under the new content since
    assert third["verifier_rows"] == {"verified": 0, "cached": 210}


@pytest.mark.slow
def test_cached_verdicts_of_real_rollouts_equal_fresh_ones(tmp_path):
    # Real model outputs (Qwen2.5-Math CoT on MATH) through the math verifier: cached verdicts are exact copies.
    cache = str(tmp_path / "cache")
    options = dict(rm_score_column="qwen_rm_score", batch_rows=128)
    fresh = label(shared_file("qwen25_math_cot100.parquet"), tmp_path / "fresh", cache_dir=cache, **options)
    cached = label(shared_file("qwen25_math_cot100.parquet"), tmp_path / "cached", cache_dir=cache, **options)
    assert cached["verifier_rows"]["verified"] == 0
    assert cached["verifier_rows"]["cached"] == fresh["verifier_rows"]["verified"] == fresh["input_rows"]
    assert_same_files(shard_bytes(tmp_path / "cached"), shard_bytes(tmp_path / "fresh"))
    columns = ["verifier_score", "verifier_status", "extracted_answer", "verifier_rule"]
    read = [pq.read_table(tmp_path / name / "data", columns=columns + ["response"]).sort_by("response")
            for name in ("fresh", "cached")]
    assert read[0].equals(read[1])


@pytest.mark.slow
def test_timeouts_are_not_cached(tmp_path):
    # A plug-in verifier that times out on some rows: those are verified again by the next run.
    (tmp_path / "flaky_rules.py").write_text(
        "def judge(reference, response, timeout_s):\n"
        "    if 'slow' in response:\n"
        "        return None, 'timeout', None\n"
        "    return (1.0 if response.strip().endswith(reference) else 0.0), 'ok', response[-8:]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        table = synthetic_rollouts(64, seed=35)
        responses = table.column("response").to_pylist()
        responses = [r + " slow" if i % 8 == 0 else r for i, r in enumerate(responses)]
        table = table.set_column(table.schema.get_field_index("response"), "response", pa.array(responses))
        table = table.set_column(table.schema.get_field_index("data_source"), "data_source",
                                 pa.array(["flaky"] * table.num_rows))
        pq.write_table(with_scores(table), tmp_path / "in.parquet")
        options = dict(rm_score_column="score", cache_dir=str(tmp_path / "cache"),
                       verifier_sources="flaky=flaky_rules:judge", max_error_rate=0.5)
        label(tmp_path / "in.parquet", tmp_path / "out1", **options)
        second = label(tmp_path / "in.parquet", tmp_path / "out2", **options)
        assert second["verifier_rows"] == {"verified": 8, "cached": 56}
        assert second["status_counts"]["verifier_status"]["timeout"] == 8
    finally:
        sys.path.remove(str(tmp_path))


def test_sigma_bar_from_an_earlier_manifest(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"sigma_bar": 0.4375}))
    base = {"input": "x", "output": "y", "rm_score_column": "s"}
    config = build_config({**base, "sigma_bar_from": str(manifest)})
    assert config.hero.sigma_bar == 0.4375
    assert config.labeling_dict() == build_config({**base, "sigma_bar": 0.4375}).labeling_dict()
    # Read once: the manifest's config (rebuilt by `herolabel fuse`) holds the value, not the file to read again.
    assert config.to_dict()["sigma_bar_from"] is None and config.to_dict()["hero"]["sigma_bar"] == 0.4375
    manifest.write_text(json.dumps({"sigma_bar": None}))
    for options, message in [
        ({"sigma_bar_from": str(manifest)}, "--sigma-bar-from: .* records no sigma_bar"),
        ({"sigma_bar_from": str(tmp_path / "absent.json")}, "--sigma-bar-from: cannot read a manifest"),
        ({"sigma_bar_from": str(manifest), "sigma_bar": 0.5}, "give one"),
        ({"sigma_bar_from": str(manifest), "fusion": "rm"}, "--fusion=rm has none|fusion=rm has none"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config({**base, **options})


@pytest.mark.slow
def test_cache_compact_command(tmp_path):
    cache = ContentCache(str(tmp_path / "cache"), {"t": 1}, VALUES)
    keys = content_keys([str(i) for i in range(30)])
    for start in range(0, 30, 10):
        cache.store(keys[start:start + 10], values(range(start, start + 10)), Locality("u"))
    done = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "cache", "compact", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 segment files -> 1; 3 merged-away segment(s) retired, 0 retired ones deleted" in done.stdout
    assert file_counts(str(tmp_path / "cache"))[Path(cache.directory).name]["segments"] == 4  # retired: still read
    now = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "cache", "compact", str(tmp_path / "cache"),
                          "--retire-after", "0"], capture_output=True, text=True, timeout=120)
    assert now.returncode == 0 and "1 segment files -> 1; 0 merged-away segment(s) retired, 3 retired" in now.stdout
    assert file_counts(str(tmp_path / "cache"))[Path(cache.directory).name]["segments"] == 1
    missing = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "cache", "compact",
                              str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no cache" in missing.stderr



@pytest.mark.slow
def test_a_cache_filled_by_joined_row_groups_serves_them_read_apart_with_the_same_bytes(tmp_path, monkeypatch):
    from pipeline.plan import make_plan
    from pipeline.stages import unit as units

    monkeypatch.setattr(units, "JOIN_ABOVE_PARTS", 0)  # join as a job of many parts would (units: the driver's)

    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(with_scores(synthetic_rollouts(400, seed=35)), source / "a.parquet", row_group_size=40)
    cache = str(tmp_path / "cache")
    # 4 buckets: units of at least 1,024 rows by default, so the file's ten row groups of 40 are one unit.
    options = dict(rm_score_column="score", batch_rows=32, rows_per_shard=100)

    def unit_sizes(output, **more) -> list[int]:
        plan = make_plan(build_config({"input": str(source), "output": str(output), **options, **more}), "test")
        return [u.rows for u in plan.units]

    assert unit_sizes(tmp_path / "joined") == [400]
    joined = label(source, tmp_path / "joined", cache_dir=cache, **options)
    assert joined["verifier_rows"] == {"verified": 400, "cached": 0}
    assert unit_sizes(tmp_path / "apart", min_part_rows=0) == [40] * 10  # each row group a unit of its own
    apart = label(source, tmp_path / "apart", cache_dir=cache, min_part_rows=0, **options)
    # Entries are filed by row group, whatever the unit: all of them are found.
    assert apart["verifier_rows"] == {"verified": 0, "cached": 400}
    assert_same_files(shard_bytes(tmp_path / "apart"), shard_bytes(tmp_path / "joined"))
