"""Inputs that are not Parquet (a `save_to_disk` dataset, JSON / JSONL files, a hub dataset id) staged as Parquet.

They are read with the datasets library and staged once under OUTPUT/_staged/ (row groups of 10,000
rows, the planner's units of work; a rerun or resume reuses the staged files, so their footers and the
run's fingerprint stay the same). `--input` may name a DatasetDict: every split is labelled.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import re

import fsspec

from pipeline.storage import fsio

STAGED_ROW_GROUP = 10_000
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def input_kind(spec: str) -> str:
    """"parquet" (read directly), "saved" (save_to_disk), "json" or "hub"."""
    if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, name))
                                   for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "saved"
    if spec.endswith(JSON_SUFFIXES):
        return "json"
    if "://" not in spec and not os.path.exists(spec) and HUB_ID.fullmatch(spec):
        return "hub"
    return "parquet"


def stage_input(spec: str, output: str) -> str:
    """The Parquet location to plan from: `spec` itself, or the staged copy of a datasets input."""
    kind = input_kind(spec)
    if kind == "parquet":
        return spec
    import datasets

    stamp = hashlib.sha256(json.dumps([kind, os.path.abspath(spec) if kind != "hub" else spec,
                                       _mtime(spec)]).encode()).hexdigest()[:16]
    staged = fsio.join(output, "_staged", stamp)
    fs, path = fsspec.core.url_to_fs(staged)
    if fs.exists(f"{path}/_STAGED"):
        return staged
    datasets.disable_progress_bars()
    if kind == "saved":
        loaded = datasets.load_from_disk(spec)
    elif kind == "json":
        files = sorted(globlib.glob(spec)) or [spec]
        loaded = datasets.load_dataset("json", data_files=files, split="train")
    else:
        loaded = datasets.load_dataset(spec)
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    fs.makedirs(path, exist_ok=True)
    for name, split in splits:
        with fsio.open_atomic(fsio.join(staged, f"{name}.parquet")) as handle:
            split.to_parquet(handle, batch_size=STAGED_ROW_GROUP)
    with fsio.open_atomic(fsio.join(staged, "_STAGED"), "w") as handle:
        json.dump({"input": spec, "kind": kind, "splits": [name for name, _ in splits]}, handle)
    return staged


def _mtime(spec: str) -> float | None:
    try:
        return os.path.getmtime(spec)
    except OSError:
        return None
