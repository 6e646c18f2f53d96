"""What the driver decides before any data moves: inputs, contract, units of work, shards, metadata."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.storage import staging, fsio
from pipeline.storage.fsio import InputError
from pipeline.config import ConfigError, PipelineConfig, name_options
from pipeline.stages.base import MetricsSink, timed
from schemas.layouts import Layout, LayoutError, choose_layout, missing_columns_hint
from schemas.rollouts import SAMPLE_INDEX, InputContract, SchemaError, validate_batch
from transforms.rm import make_reward_model


@dataclass(frozen=True)
class WorkUnit:
    """One input row group: the unit engines distribute (read, validate, verify, score, spill)."""

    file_index: int
    url: str
    row_group: int
    first_row: int  # row index of the row group's first row within its file
    rows: int

    @property
    def name(self) -> str:
        """Deterministic name used for this unit's spill files (a retried unit rewrites the same files)."""
        return f"file-{self.file_index:05d}-rg-{self.row_group:05d}"

    def read(self, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
        """Yields (row offset within the file, table) batches of at most `batch_rows` rows."""
        for offset, table in fsio.iter_row_group(self.url, self.row_group, batch_rows):
            yield self.first_row + offset, table


@dataclass(frozen=True)
class RunPlan:
    """Inputs, the unified contract, shard count and output metadata of one run."""

    config: PipelineConfig
    files: tuple[fsio.InputFile, ...]
    contract: InputContract
    num_shards: int
    metadata: dict  # stored in every output file (sigma_bar is added per run)
    rm_needs_accelerator: bool  # place scoring on accelerator workers (RewardBackend.needs_accelerator)
    layout: Layout | None = None  # another tool's layout, applied to every batch read (schemas/layouts.py)

    @property
    def input_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def units(self) -> list[WorkUnit]:
        return [WorkUnit(f.index, f.url, rg, start, f.row_group_rows[rg]) for f in self.files
                for rg, start in enumerate(f.row_group_starts) if f.row_group_rows[rg]]

    @property
    def spill_dir(self) -> str:
        return fsio.join(self.config.output, "_shuffle")

    def read_and_validate(self, unit: WorkUnit, sink: MetricsSink) -> Iterator[tuple[pa.Table, pa.Table]]:
        """(valid rows cast to the contract, error records) per batch of `unit`, timed and counted."""
        batches = unit.read(self.config.batch_rows)
        exploded = unit.first_row  # with a layout, rows are numbered in the long form
        while True:
            with timed(sink, "read"):
                batch = next(batches, None)
                if batch is not None and self.layout is not None:
                    table = self.layout.apply(batch[1])
                    batch = (exploded, table)
                    exploded += table.num_rows
            if batch is None:
                return
            offset, table = batch
            sink.count("read", table.num_rows)
            with timed(sink, "validate"):
                valid, errors = validate_batch(table, self.contract, source_file=unit.url, file_index=unit.file_index,
                                               row_offset=offset)
            if errors.num_rows:
                sink.count("errors", errors.num_rows)
            yield valid, errors

    @property
    def has_sample_index(self) -> bool:
        """Whether rows carry sample_index, which makes (prompt_id, sample_index) a row's identity."""
        return SAMPLE_INDEX in self.contract.schema.names

    @property
    def sigma_mode(self) -> str:
        """"none" (no RM scores), "fixed" (--sigma-bar) or "job_mean" (computed from every group)."""
        if self.config.rm.backend == "none":
            return "none"
        return "fixed" if self.config.hero.sigma_bar is not None else "job_mean"

    @property
    def fixed_sigma_bar(self) -> float | None:
        """sigma_bar known before any data moves (None for "none"; for "job_mean" engines compute it)."""
        return float(self.config.hero.sigma_bar) if self.sigma_mode == "fixed" else None


def make_plan(config: PipelineConfig, package_version: str) -> RunPlan:
    """Inspects the inputs (footers only), derives the contract and shard count, checks the RM settings."""
    files = tuple(fsio.inspect_inputs(staging.stage_input(config.input, config.output)))
    try:
        layout = choose_layout(files[0].schema, config.preset, config.column_map)
    except LayoutError as exc:
        raise InputError(f"--input {config.input}: {exc}") from exc
    schemas = [f.schema for f in files]
    if layout is not None:
        schemas = [layout.apply(schema.empty_table()).schema for schema in schemas]
        if layout.explode:
            files = tuple(_long_form_counts(f, layout.explode) for f in files)
    try:
        contract = InputContract.from_file_schemas(schemas, [f.url for f in files])
    except SchemaError as exc:
        if layout is None and "column" in str(exc):
            raise SchemaError(f"{exc}; {missing_columns_hint(files[0].schema)}") from exc
        raise
    if not any(f.num_rows for f in files):
        raise InputError(f"--input {config.input}: the input is empty ({len(files)} Parquet file(s), 0 rows: "
                         f"{', '.join(f.url for f in files[:3])}{' ...' if len(files) > 3 else ''})")
    model = make_reward_model(config.rm)
    try:
        model.check_schema(contract.input_schema())
        identity = model.identity()  # resolves the model (config, tokenizer, weights) before any data moves
    except ValueError as exc:
        raise ConfigError(name_options(str(exc))) from exc
    if identity.get("commit") and config.rm.revision != identity["commit"]:
        # Every worker loads the commit the driver resolved, even if the branch moves during the run.
        config = dataclasses.replace(config, rm=dataclasses.replace(config.rm, revision=identity["commit"]))
    total = sum(f.num_rows for f in files)
    num_shards = max(1, math.ceil(total / config.rows_per_shard))
    metadata = {
        "herolabel_version": package_version,
        "config": config.labeling_dict(),
        "reward_model": identity,
    }
    if layout is not None:
        metadata["layout"] = layout.name
    return RunPlan(config, files, contract, num_shards, metadata, model.needs_accelerator, layout)


def _long_form_counts(file: fsio.InputFile, column: str) -> fsio.InputFile:
    """The file's row counts after exploding its list `column` (reads that column once, on the driver)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import fsspec

    with fsspec.open(file.url, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        rows = []
        for group in range(parquet.num_row_groups):
            lists = parquet.read_row_group(group, columns=[column]).column(column)
            rows.append(int(pc.sum(pc.fill_null(pc.list_value_length(lists), 0)).as_py() or 0))
    starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(rows)[:-1]])) if rows else ()
    return dataclasses.replace(file, num_rows=sum(rows), row_group_rows=tuple(rows), row_group_starts=starts)
