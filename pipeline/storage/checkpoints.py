"""Resume after a crash: this run's completed units of work, under deterministic names, engine-neutral.

    OUTPUT/_shuffle/run.json              what the run is (labeling settings, RM identity, inputs, shards)
    OUTPUT/_shuffle/units/UNIT.json       a unit (input row group) is verified, scored and spilled
    OUTPUT/_shuffle/spill/UNIT-D.arrows   its spilled rows (bucket: byte range, in its marker); its bad rows
                                          in OUTPUT/_shuffle/errors/UNIT.parquet
    OUTPUT/data/part-B-of-S.parquet       a finished shard (written atomically: complete when present)

A marker is written only after the unit's spill object, so a unit with a marker is complete; a run
killed at any point and started again with the same arguments reads the markers, skips those units
and the finished shards, and recomputes the rest. Every file is a deterministic function of the input
and the labeling settings, so the result is byte-identical to an uninterrupted run. A resume with other
settings is refused, naming what differs (the fingerprint is the plan's: RunPlan.fingerprint).
(Scores reused across runs belong to the RM score cache, not
here: these checkpoints live only until the run completes.)
"""

from __future__ import annotations

import json

import fsspec

from pipeline.storage import fsio


def _url(spill_dir: str, *parts: str) -> str:
    return fsio.join(spill_dir, *parts)


def read_fingerprint(output: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(output)
    if not fs.exists(f"{path}/_shuffle/run.json"):
        return None
    with fs.open(f"{path}/_shuffle/run.json", "r") as handle:
        return json.load(handle)


def write_fingerprint(spill_dir: str, fingerprint: dict) -> None:
    with fsio.open_atomic(_url(spill_dir, "run.json"), "w") as handle:
        json.dump(fingerprint, handle, indent=1, sort_keys=True)


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable keys that differ between two fingerprints (nested settings by dotted name)."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += [f"{key}.{d}" for d in differences(a, b)]
        elif a != b:
            found.append(key)
    return found


def marker_url(spill_dir: str, unit_name: str) -> str:
    return _url(spill_dir, "units", f"{unit_name}.json")


def write_marker(spill_dir: str, unit_name: str, buckets: dict[int, str], errors_url: str | None) -> None:
    """Records a completed unit (WorkUnit.name); call only after its spill files are complete."""
    with fsio.open_atomic(marker_url(spill_dir, unit_name), "w") as handle:
        json.dump({"buckets": {str(b): u for b, u in buckets.items()}, "errors_url": errors_url}, handle)


def completed_units(spill_dir: str) -> dict[str, dict]:
    """unit name -> {"buckets": {bucket: url}, "errors_url": url or None} for every marked unit."""
    fs, path = fsspec.core.url_to_fs(_url(spill_dir, "units"))
    if not fs.exists(path):
        return {}
    done = {}
    for file in fs.glob(f"{path}/*.json"):
        with fs.open(file, "r") as handle:
            marker = json.load(handle)
        done[file.rsplit("/", 1)[1][:-len(".json")]] = {
            "buckets": {int(b): u for b, u in marker["buckets"].items()}, "errors_url": marker["errors_url"]}
    return done


def shard_done(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)
