"""What the driver decides before any data moves: inputs, contract, units of work, shards, metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from pipeline import io
from pipeline.config import ConfigError, PipelineConfig, name_options
from schemas.rollouts import InputContract, validate_batch
from transforms.reward_models import make_reward_model


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
        for offset, table in io.iter_row_group(self.url, self.row_group, batch_rows):
            yield self.first_row + offset, table


@dataclass(frozen=True)
class RunPlan:
    """Inputs, the unified contract, shard count and output metadata of one run."""

    config: PipelineConfig
    files: tuple[io.InputFile, ...]
    contract: InputContract
    num_shards: int
    metadata: dict  # stored in every output file (sigma_bar is added per run)

    @property
    def input_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def units(self) -> list[WorkUnit]:
        return [WorkUnit(f.index, f.url, rg, start, f.row_group_rows[rg]) for f in self.files
                for rg, start in enumerate(f.row_group_starts) if f.row_group_rows[rg]]

    @property
    def spill_dir(self) -> str:
        return io.join(self.config.output, "_shuffle")

    def validate(self, unit_url: str, file_index: int, offset: int, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(valid rows cast to the contract, error records) of one batch read at `offset` of a file."""
        return validate_batch(table, self.contract, source_file=unit_url, file_index=file_index, row_offset=offset)


def make_plan(config: PipelineConfig, package_version: str) -> RunPlan:
    """Inspects the inputs (footers only), derives the contract and shard count, checks the RM settings."""
    files = tuple(io.inspect_inputs(config.input))
    contract = InputContract.from_file_schemas([f.schema for f in files])
    model = make_reward_model(config.rm)
    try:
        model.check_schema(contract.input_schema())
    except ValueError as exc:
        raise ConfigError(name_options(str(exc))) from exc
    total = sum(f.num_rows for f in files)
    num_shards = max(1, math.ceil(total / config.rows_per_shard))
    metadata = {
        "herolabel_version": package_version,
        "config": config.labeling_dict(),
        "reward_model": model.identity(),
    }
    return RunPlan(config, files, contract, num_shards, metadata)
