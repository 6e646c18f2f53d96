"""Hugging Face datasets in (save_to_disk, JSONL) and out (Parquet shards, a dataset card with configs)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import label, shared_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows():
    return pq.read_table(shared_file("qwen25_math_cot100.parquet")).slice(0, 40)


def test_a_saved_dataset_is_read(tmp_path, rows):
    import datasets

    datasets.Dataset(rows).save_to_disk(str(tmp_path / "saved"))
    manifest = label(tmp_path / "saved", tmp_path / "out", rm_score_column="qwen_rm_score")
    assert manifest["input_rows"] == manifest["output_rows"] == 40 and manifest["accounted"]


def test_a_dataset_dict_labels_every_split(tmp_path, rows):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset(rows.slice(0, 24)),
                          "test": datasets.Dataset(rows.slice(24, 16))}).save_to_disk(str(tmp_path / "saved"))
    assert label(tmp_path / "saved", tmp_path / "out", rm_backend="none")["output_rows"] == 40


def test_jsonl_is_read_and_a_rerun_reuses_the_staged_copy(tmp_path, rows):
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows.to_pylist()))
    first = label(path, tmp_path / "out", rm_backend="none")
    staged = sorted((tmp_path / "out" / "_staged").rglob("*.parquet"))
    assert first["output_rows"] == 40 and len(staged) == 1
    stamp = staged[0].stat().st_mtime_ns
    label(path, tmp_path / "out", rm_backend="none", overwrite=True)
    assert staged[0].stat().st_mtime_ns == stamp  # staged once


def test_output_loads_with_datasets_by_config(tmp_path, rows):
    import datasets

    pq.write_table(rows, tmp_path / "in.parquet")
    label(tmp_path / "in.parquet", tmp_path / "out", rm_score_column="qwen_rm_score", pairs=True,
          pairs_within_band=True)
    output = str(tmp_path / "out")
    data = datasets.load_dataset(output, split="train")  # the card's default config
    assert len(data) == 40 and "hero_reward" in data.features and "chosen" not in data.features
    assert data.features["verifier_score"].dtype == "float32"
    pairs = datasets.load_dataset(output, "pairs", split="train")
    assert len(pairs) > 0 and set(pairs.features) >= {"prompt", "chosen", "rejected", "margin"}
    direct = datasets.load_dataset("parquet", data_files=f"{output}/data/*.parquet", split="train")
    assert direct.features == data.features
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "config_name: pairs" in card and "| `hero_reward` |" in card


def test_two_outputs_with_the_same_name_load_their_own_rows(tmp_path, rows):
    """datasets caches a local directory's configs by its base name and the card's metadata; the card's
    sizes and counts keep two outputs both named "out" apart."""
    import datasets

    loaded = []
    for run, count in (("first", 16), ("second", 40)):
        pq.write_table(rows.slice(0, count), tmp_path / f"{run}.parquet")
        label(tmp_path / f"{run}.parquet", tmp_path / run / "out", rm_score_column="qwen_rm_score", pairs=True,
              pairs_within_band=True)
        loaded.append((len(datasets.load_dataset(str(tmp_path / run / "out"), split="train")),
                       len(datasets.load_dataset(str(tmp_path / run / "out"), "pairs", split="train")),
                       pq.read_table(tmp_path / run / "out" / "pairs").num_rows))
    assert [n for n, _, _ in loaded] == [16, 40]
    assert all(pairs == expected for _, pairs, expected in loaded)
