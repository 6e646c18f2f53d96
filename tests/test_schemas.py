"""Data contract: unified schema, validation into valid rows and error records, bucketing."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from schemas.rollouts import (
    CHAT_PROMPT,
    ORDER,
    InputContract,
    SchemaError,
    bucket_of,
    prompt_key,
    validate_batch,
)


def contract_for(*tables: pa.Table) -> InputContract:
    return InputContract.from_file_schemas([t.schema for t in tables])


def test_valid_rows_keep_pass_through_columns_and_get_an_order():
    batch = pa.table({"prompt_id": ["a", "a"], "prompt": ["q", "q"], "response": ["r1", "r2"],
                      "reference": ["1", "1"], "generator": ["m1", "m2"]})
    valid, errors = validate_batch(batch, contract_for(batch), source_file="f.parquet", file_index=3, row_offset=10)
    assert errors.num_rows == 0
    assert valid.column("generator").to_pylist() == ["m1", "m2"]
    assert valid.column(ORDER).to_pylist() == [(3 << 32) + 10, (3 << 32) + 11]


# (column values that break a row, expected reason)
BAD_ROWS = [
    ({"response": [None, "fine"]}, "response is null"),  # null response
    ({"prompt": [None, "q"]}, "prompt is null"),  # null prompt
]


@pytest.mark.parametrize("override,reason", BAD_ROWS)
def test_bad_rows_go_to_errors_with_a_reason(override, reason):
    columns = {"prompt_id": ["a", "a"], "prompt": ["q", "q"], "response": ["r", "r"], "reference": ["1", "1"]}
    columns.update(override)
    batch = pa.table(columns)
    valid, errors = validate_batch(batch, contract_for(batch), source_file="in.parquet", file_index=0, row_offset=5)
    assert valid.num_rows == 1
    row = errors.to_pylist()[0]
    assert (row["stage"], row["reason"], row["source_file"], row["source_row"]) == ("validate", reason, "in.parquet", 5)
    assert json.loads(row["record"])["prompt_id"] == "a"  # the original row is kept, nothing lost


def test_wrong_column_type_sends_the_whole_batch_to_errors():
    good = pa.table({"prompt": ["q"], "response": ["r"]})
    bad = pa.table({"prompt": ["q", "q"], "response": pa.array([1, 2], pa.int64())})
    valid, errors = validate_batch(bad, contract_for(good, bad), source_file="b", file_index=1, row_offset=0)
    assert valid.num_rows == 0
    assert errors.column("reason").to_pylist() == ["column 'response' has type int64, expected string"] * 2


def test_missing_prompt_id_is_a_stable_hash_of_the_prompt():
    batch = pa.table({"prompt": ["What is 1+1?", "What is 1+1?", "Other"], "response": ["2", "3", "x"]})
    valid, _ = validate_batch(batch, contract_for(batch), source_file="f", file_index=0, row_offset=0)
    ids = valid.column("prompt_id").to_pylist()
    assert ids[0] == ids[1] == prompt_key("What is 1+1?") != ids[2]
    assert len(ids[0]) == 16


def test_chat_prompts_and_numeric_references_are_accepted():
    chat = pa.array([[{"role": "user", "content": "2+2?"}]], CHAT_PROMPT)
    batch = pa.table({"prompt": chat, "response": ["4"], "reference": pa.array([4.0])})
    valid, errors = validate_batch(batch, contract_for(batch), source_file="f", file_index=0, row_offset=0)
    assert errors.num_rows == 0
    assert valid.column("reference").to_pylist() == ["4"]  # 4.0 -> "4", not "4.0"
    assert valid.column("prompt_id").to_pylist() == [prompt_key([{"role": "user", "content": "2+2?"}])]


@pytest.mark.parametrize("schemas,message", [
    ([pa.schema([("prompt", pa.string())])], "no input file has a 'response' column"),
    ([pa.schema([("prompt", pa.string()), ("response", pa.string()), ("hero_reward", pa.float64())])],
     "collides with an output column"),
    ([pa.schema([("prompt", pa.string()), ("response", pa.string())]),
      pa.schema([("prompt", CHAT_PROMPT), ("response", pa.string())])],
     r"mix string prompts \(file 0 \(string\)\) and chat-message prompts \(file 1 \(list"),  # files named
    ([pa.schema([("prompt", pa.string()), ("response", pa.string()), ("x", pa.string())]),
      pa.schema([("prompt", pa.string()), ("response", pa.string()), ("x", pa.list_(pa.int8()))])],
     "column 'x' has incompatible types across files: list<item: int8> in file 1; string in file 0"),
])
def test_unusable_inputs_fail_before_any_data_moves(schemas, message):
    with pytest.raises(SchemaError, match=message):
        InputContract.from_file_schemas(schemas)


def test_column_missing_from_one_file_is_filled_with_nulls():
    first = pa.table({"prompt": ["q"], "response": ["r"], "level": ["hard"]})
    second = pa.table({"prompt": ["q"], "response": ["r"]})
    valid, _ = validate_batch(second, contract_for(first, second), source_file="f", file_index=1, row_offset=0)
    assert valid.column("level").to_pylist() == [None]


def test_buckets_are_stable_and_keep_groups_together():
    ids = pa.array(["p1", "p2", "p1", "p3", "p2"])
    buckets = bucket_of(ids, 7)
    assert buckets[0] == buckets[2] and buckets[1] == buckets[4]
    assert list(buckets) == list(bucket_of(ids, 7))
    assert all(0 <= b < 7 for b in buckets)
    assert list(bucket_of(ids, 1)) == [0] * 5


def test_value_that_cannot_take_the_unified_type_goes_to_errors():
    # uint64 + int64 across files unify to int64; a uint64 above int64's range cannot be stored.
    big = pa.table({"prompt": ["q", "q"], "response": ["r", None], "x": pa.array([2**63 + 5, 1], pa.uint64())})
    small = pa.table({"prompt": ["q"], "response": ["r"], "x": pa.array([1], pa.int64())})
    valid, errors = validate_batch(big, contract_for(big, small), source_file="big", file_index=0, row_offset=0)
    assert valid.num_rows == 0
    assert errors.column("source_row").to_pylist() == [1, 0]  # the null response first, then the cast failure
    assert errors.column("reason")[1].as_py().startswith("column 'x' cannot be read as int64")


def test_chat_messages_keep_extra_fields_and_sample_index_its_type():
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])
    chat = pa.array([[{"role": "user", "content": "hi", "name": "ann"}]], pa.list_(message))
    batch = pa.table({"prompt": chat, "response": ["yo"], "sample_index": pa.array([3], pa.int16())})
    valid, errors = validate_batch(batch, contract_for(batch), source_file="f", file_index=0, row_offset=0)
    assert errors.num_rows == 0
    assert valid.column("prompt").to_pylist() == [[{"role": "user", "content": "hi", "name": "ann"}]]
    assert valid.schema.field("sample_index").type == pa.int16()
