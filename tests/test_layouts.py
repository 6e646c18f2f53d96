"""Producer layouts: each on a small fixture built the way that producer writes it, labelled end to end."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ENGINE_NAMES, label, shared_file
from schemas.layouts import LayoutError, choose_layout

pytestmark = pytest.mark.slow


def long_form(rows=48) -> pa.Table:
    """Real rollouts in the project's long form: qwen25_math_cot100, whole prompt groups."""
    table = pq.read_table(shared_file("qwen25_math_cot100.parquet"))
    return table.slice(0, rows)


def verdicts(output, key=("prompt_id", "sample_index")) -> dict:
    table = pq.read_table(output / "data")
    return {tuple(r[k] for k in key): (r["verifier_score"], r["extracted_answer"]) for r in table.to_pylist()}


def grouped(table: pa.Table) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["prompt_id"], []).append(row)
    return [(k, sorted(v, key=lambda r: r["sample_index"])) for k, v in groups.items()]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_verl_generation_output_labels_with_no_renaming(tmp_path, engine):
    """verl's main_generation writes its RL parquet (data_source, prompt as chat messages, ability,
    reward_model {style, ground_truth}, extra_info {split, index}) plus `responses`: the n responses
    generated for each prompt, as a list."""
    source = long_form()
    pq.write_table(source, tmp_path / "long.parquet")
    rows, index_of = [], {}
    for index, (prompt_id, members) in enumerate(grouped(source)):
        index_of[prompt_id] = index
        rows.append({"data_source": members[0]["data_source"],
                     "prompt": [{"role": "user", "content": members[0]["prompt"]}], "ability": "math",
                     "reward_model": {"style": "rule", "ground_truth": members[0]["reference"]},
                     "extra_info": {"split": "test", "index": index},
                     "responses": [m["response"] for m in members]})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "verl.parquet")
    verl = label(tmp_path / "verl.parquet", tmp_path / "verl_out", rm_backend="none", engine=engine)
    long = label(tmp_path / "long.parquet", tmp_path / "long_out", rm_backend="none")
    assert verl["input_rows"] == long["input_rows"] == source.num_rows and verl["accounted"]
    by_long = {(str(index_of[p]), s): v for (p, s), v in verdicts(tmp_path / "long_out").items()}
    assert verdicts(tmp_path / "verl_out") == by_long  # same verdicts, row for row


def test_trl_prompt_completion_solution(tmp_path):
    """TRL's GRPO / online-DPO datasets: prompt, completion, solution (no prompt_id: one is derived)."""
    source = long_form(16)
    pq.write_table(pa.table({"prompt": source.column("prompt"), "completion": source.column("response"),
                             "solution": source.column("reference")}), tmp_path / "trl.parquet")
    manifest = label(tmp_path / "trl.parquet", tmp_path / "out", rm_backend="none")
    out = pq.read_table(tmp_path / "out" / "data")
    assert manifest["output_rows"] == 16 and manifest["status_counts"]["verifier_status"] == {"ok": 16}
    assert out.column("prompt_id").null_count == 0
    assert len(set(out.column("prompt_id").to_pylist())) == len(set(source.column("prompt").to_pylist()))


def test_openrlhf_keys_and_a_column_map(tmp_path):
    """OpenRLHF's datasets use --input_key / --output_key / --label_key (input, output, label by
    default); a file with other keys maps them with --column-map."""
    source = long_form(16)
    pq.write_table(pa.table({"input": source.column("prompt"), "output": source.column("response"),
                             "label": source.column("reference")}), tmp_path / "orlhf.parquet")
    assert label(tmp_path / "orlhf.parquet", tmp_path / "a", rm_backend="none")["output_rows"] == 16
    pq.write_table(pa.table({"query": source.column("prompt"), "output": source.column("response"),
                             "gt": source.column("reference")}), tmp_path / "custom.parquet")
    manifest = label(tmp_path / "custom.parquet", tmp_path / "b", rm_backend="none", preset="openrlhf",
                     column_map="query=prompt,gt=reference")
    assert manifest["output_rows"] == 16
    assert verdicts(tmp_path / "a", ("prompt_id",)).keys() == verdicts(tmp_path / "b", ("prompt_id",)).keys()


def test_wide_rows_from_open_r1_style_generations(tmp_path):
    """open-r1's generated datasets: problem, answer, generations (a list per problem, vLLM n > 1)."""
    source = long_form(24)
    rows = [{"problem": members[0]["prompt"], "answer": members[0]["reference"],
             "generations": [m["response"] for m in members]} for _, members in grouped(source)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r1.parquet")
    manifest = label(tmp_path / "r1.parquet", tmp_path / "out", rm_backend="none", preset="wide:generations",
                     column_map="problem=prompt,answer=reference")
    assert manifest["input_rows"] == manifest["output_rows"] == 24
    out = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert sorted(r["sample_index"] for r in out if r["prompt_id"] == out[0]["prompt_id"]) == list(range(8))


@pytest.mark.parametrize("columns,presets,message", [
    (["prompt", "completion", "solution", "input", "output", "label"], "", "several presets"),  # ambiguous
    (["prompt", "response", "reference"], "bogus", "unknown preset"),
])
def test_layout_errors_list_what_was_seen(columns, presets, message):
    with pytest.raises(LayoutError, match=message) as info:
        choose_layout(pa.schema([(c, pa.string()) for c in columns]), presets)
    if message == "several presets":
        assert "completion" in str(info.value) and "openrlhf" in str(info.value) and "trl" in str(info.value)


def test_an_unfitting_input_stops_before_any_data_moves(tmp_path):
    from schemas.rollouts import SchemaError

    pq.write_table(pa.table({"question": ["q"], "answer": ["1"], "model_output": ["1"]}), tmp_path / "x.parquet")
    with pytest.raises(SchemaError) as info:
        label(tmp_path / "x.parquet", tmp_path / "out", rm_backend="none")
    message = str(info.value)
    assert "x.parquet" in message or "column" in message  # the contract's own message ...
    assert "columns seen: question, answer, model_output" in message and "verl needs" in message  # ... and the hint
    assert not (tmp_path / "out").exists()
