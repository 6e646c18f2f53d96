"""Input discovery and atomic writes; Beam flag pass-through."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.engines.beam import check_beam_args
from pipeline.storage.fsio import InputError, inspect_inputs, list_input_files, read_file_metadata, write_parquet_atomic


@pytest.fixture
def tree(tmp_path):
    table = pa.table({"prompt": ["q"] * 5, "response": ["r"] * 5})
    (tmp_path / "day1").mkdir()
    (tmp_path / "day2" / "late").mkdir(parents=True)
    pq.write_table(table, tmp_path / "day1" / "a.parquet", row_group_size=2)
    pq.write_table(table, tmp_path / "day2" / "b.parquet")
    pq.write_table(table, tmp_path / "day2" / "late" / "c.parquet")
    (tmp_path / "day2" / "notes.txt").write_text("not parquet")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize("spec,expected", [
    ("day1/a.parquet", ["day1/a.parquet"]),  # a single file
    ("day2", ["day2/b.parquet", "day2/late/c.parquet"]),  # a directory, recursively, Parquet only
    ("day*/*.parquet", ["day1/a.parquet", "day2/b.parquet"]),  # a glob
])
def test_input_specs(tree, spec, expected):
    assert list_input_files(str(tree / spec)) == [str(tree / e) for e in expected]


@pytest.mark.parametrize("spec,message", [
    ("missing.parquet", "no such file or directory"),
    ("empty", "no Parquet files found"),
    ("day2/notes.txt", "not a readable Parquet file"),
])
def test_unusable_inputs(tree, spec, message):
    with pytest.raises(InputError, match=message):
        inspect_inputs(str(tree / spec))


def test_row_group_layout_is_read_from_footers(tree):
    (info,) = inspect_inputs(str(tree / "day1"))
    assert (info.num_rows, info.row_group_starts, info.row_group_rows) == (5, (0, 2, 4), (2, 2, 1))


def test_atomic_write_leaves_no_temporaries_and_keeps_metadata(tmp_path):
    url = str(tmp_path / "out" / "part-0.parquet")
    write_parquet_atomic(pa.table({"x": [1, 2]}), url, {"sigma_bar": 0.5})
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-0.parquet"]
    assert read_file_metadata(url) == {"sigma_bar": 0.5}
    assert pq.read_table(url).column("x").to_pylist() == [1, 2]


def test_beam_flags_pass_through_and_unknown_flags_fail():
    options = check_beam_args(("--runner", "DataflowRunner", "--project", "p", "--region", "r",
                               "--temp_location", "gs://b/tmp"))
    assert options.get_all_options()["project"] == "p"
    with pytest.raises(ValueError, match="--rm-modle"):
        check_beam_args(("--rm-modle", "x"))


class _ObjectStore(MemoryFileSystem):
    """An in-memory filesystem that calls itself s3 and refuses renames, as an object store would charge."""

    protocol = ("s3",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return "/" + str(path).removeprefix("s3://").lstrip("/")

    def mv(self, *args, **kwargs):
        raise AssertionError("an object store upload must not be written as temporary + rename")


def test_atomic_writes_rename_on_posix_and_upload_directly_on_object_stores(tmp_path):
    import fsspec
    import pyarrow as pa

    from pipeline.storage import fsio

    assert fsio.renames_for_atomicity(fsspec.filesystem("file"))
    assert fsio.renames_for_atomicity(fsspec.filesystem("memory"))
    store = _ObjectStore()
    assert not fsio.renames_for_atomicity(store)
    fsspec.register_implementation("s3", _ObjectStore, clobber=True)
    try:
        write_parquet_atomic(pa.table({"x": [1, 2]}), "s3://bucket/out/part.parquet", {"k": 1})
        assert store.ls("/bucket/out", detail=False) == ["/bucket/out/part.parquet"]  # no temporary ever existed
        assert read_file_metadata("s3://bucket/out/part.parquet") == {"k": 1}
    finally:
        store.rm("/bucket", recursive=True)
        from fsspec.registry import _registry

        _registry.pop("s3", None)  # noqa: SLF001 - back to fsspec's own s3 entry


def test_an_interrupted_object_store_write_publishes_nothing():
    import fsspec

    from pipeline.storage import fsio

    store = _ObjectStore()
    fsspec.register_implementation("s3", _ObjectStore, clobber=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            with fsio.open_atomic("s3://bucket/out/part.parquet") as handle:
                handle.write(b"PAR1 half a file")
                raise KeyboardInterrupt
        assert not store.exists("/bucket/out/part.parquet")
    finally:
        from fsspec.registry import _registry

        _registry.pop("s3", None)  # noqa: SLF001 - back to fsspec's own s3 entry
