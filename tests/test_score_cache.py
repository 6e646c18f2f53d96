"""The score cache (--cache-dir) through real pipeline runs on both engines with the tiny RM."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label
from shards import assert_same_files, shard_bytes
from pipeline.tools.demo import synthetic_rollouts, write_synthetic_rollouts
from pipeline.storage.score_cache import SCORE_VALUES, cacheable_scores, rollout_keys, score_cache

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_a_second_run_scores_nothing_and_writes_the_same_output(tmp_path, tiny_rm_path, engine):
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 96, seed=21)
    cache = str(tmp_path / "cache")
    first = label(tmp_path / "in.parquet", tmp_path / "first", rm_model=tiny_rm_path, cache_dir=cache, engine=engine,
                  batch_rows=40)
    assert first["rm_rows"] == {"scored": 96, "cached": 0}
    second = label(tmp_path / "in.parquet", tmp_path / "second", rm_model=tiny_rm_path, cache_dir=cache,
                   engine=engine, batch_rows=40)
    assert second["rm_rows"] == {"scored": 0, "cached": 96}
    assert_same_files(shard_bytes(tmp_path / "second"), shard_bytes(tmp_path / "first"))
    label(tmp_path / "in.parquet", tmp_path / "uncached", rm_model=tiny_rm_path, engine=engine,
          batch_rows=40)
    assert_same_files(shard_bytes(tmp_path / "uncached"), shard_bytes(tmp_path / "first"))  # the cache changes no byte


def test_grown_input_scores_only_the_new_rows(tmp_path, tiny_rm_path):
    os.makedirs(tmp_path / "night1")
    write_synthetic_rollouts(str(tmp_path / "night1" / "a.parquet"), 64, seed=22)
    cache = str(tmp_path / "cache")
    label(tmp_path / "night1", tmp_path / "out1", rm_model=tiny_rm_path, cache_dir=cache)
    grown = tmp_path / "night2"
    os.makedirs(grown)
    (grown / "a.parquet").write_bytes((tmp_path / "night1" / "a.parquet").read_bytes())
    new_rows = synthetic_rollouts(40, seed=23)
    new_rows = new_rows.set_column(new_rows.schema.get_field_index("prompt_id"), "prompt_id",
                                   pa.array([f"new-{p}" for p in new_rows.column("prompt_id").to_pylist()]))
    pq.write_table(new_rows, grown / "b.parquet")
    manifest = label(grown, tmp_path / "out2", rm_model=tiny_rm_path, cache_dir=cache)
    assert manifest["rm_rows"] == {"scored": 40, "cached": 64}
    assert manifest["status_counts"]["rm_status"] == {"ok": 104}


def test_cache_namespace_follows_the_model_and_settings(tmp_path):
    table = synthetic_rollouts(8, seed=24)
    keys = rollout_keys(table.column("prompt").to_pylist(), table.column("response").to_pylist())
    identity = {"backend": "transformers", "fingerprint": "a" * 32, "dtype": "float32", "max_length": 256,
                "truncation_side": "left", "chat_template_sha256": "t"}
    scores, statuses = np.arange(8.0), ["ok"] * 6 + ["truncated", "error"]
    keep = cacheable_scores(scores, statuses)
    assert keep.tolist() == [True] * 7 + [False]  # errors are not cached: they are retried
    values = pa.table({"rm_score": pa.array(scores[keep], pa.float32()),
                       "rm_status": [s for s, k in zip(statuses, keep) if k]}, schema=SCORE_VALUES)
    score_cache(str(tmp_path), identity).store(keys[keep], values)
    hit, cached = score_cache(str(tmp_path), identity).lookup(keys)
    assert hit.tolist() == [True] * 7 + [False]
    assert cached.column("rm_score").to_pylist() == list(range(7))
    assert cached.column("rm_status").to_pylist() == ["ok"] * 6 + ["truncated"]
    for change in ({"fingerprint": "b" * 32}, {"dtype": "bfloat16"}, {"max_length": 512},
                   {"truncation_side": "right"}, {"chat_template_sha256": "u"}, {"backend": "vllm"}):
        assert not score_cache(str(tmp_path), {**identity, **change}).lookup(keys)[0].any(), change


@pytest.mark.parametrize("prompt_a,response_a,prompt_b,response_b", [
    ("What is 2+2?", "4", "What is 2+2?", "4 "),  # a trailing space is another response
    ("ab", "c", "a", "bc"),  # the boundary between prompt and response matters
    ("Hi", "x", [{"role": "user", "content": "Hi"}], "x"),  # string vs chat prompt: keyed apart (a miss, never a wrong hit)
    ([{"role": "user", "content": "Hi"}], "x", [{"role": "system", "content": "Hi"}], "x"),  # roles matter
])
def test_rollout_keys_tell_rollouts_apart(prompt_a, response_a, prompt_b, response_b):
    a, b = rollout_keys([prompt_a, prompt_b], [response_a, response_b])
    assert a != b
    assert rollout_keys([prompt_a], [response_a])[0] == a  # and are stable
