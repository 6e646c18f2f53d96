"""A unit of work, the element every engine distributes, and its completion protocol, written once.

A unit is an input row group, a slice of one, or a run of small consecutive row groups of one file: a row
group of more than UNIT_ROWS rows (rounded down to whole batches) is split into sub-units, and in a job
of many parts (below) row groups smaller than its unit size are read together, with deterministic names,
`file-FFFFF-rg-GGGGG`, `file-FFFFF-rg-GGGGG-part-PPPP` or `file-FFFFF-rg-GGGGG-HHHHH` (row groups G to H);
the names are the completion markers' names, so a resumed run finds them again. Every engine runs, per unit:

    tables = read_unit(plan, unit, sink)              read, apply the layout, validate, spill error records
    tables = run_stages(plan.stages[i:j], tables, ...) the row stages, placed by their resources
    done = complete_unit(plan, tables, sink)          spill rows by bucket, close, fault point, marker

and groups the spill files of every completed unit by bucket. A unit's tables travel whole between
stages (at most UNIT_ROWS rows, in batches of --batch-rows), so engines need no in-band end-of-unit
markers and every runner, local or remote, writes the same markers.

Why small row groups are joined: a unit spills one part per bucket it has rows of, and a bucket's fusion
reads one part per unit, so a job reads units x buckets parts; with units the size of the input's row groups
that grows with the square of the job (5,000-row row groups at 10M rows: 2,000 units x 200 buckets, 400k
parts of 25 rows). So past JOIN_ABOVE_PARTS parts, units of at least --min-part-rows (256) rows per
bucket (up to UNIT_ROWS) keep it about input rows / 256 parts whatever the job size, until units reach
UNIT_ROWS (past 256 buckets: 12.8M rows at the default --rows-per-shard); the cache still files each row group's entries apart
(content_cache.unit_locality), so a cache filled by units of another size serves them the same.

Costs of the split: Parquet decodes a row group's pages in order, so a sub-unit decodes the rows before it
and drops them (a 400k-row row group in 7 sub-units: 0.15 s more than one read, 0.4 us per row, against
about 1-3 ms per row of verification); a unit's batches are held whole (UNIT_ROWS rows at most, input and
output batches of the stage being run; with a layout that explodes rows, `wide` or verl's, the row group is
cut by exploded rows, from the list lengths the planner reads, one batch at the least).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import pyarrow as pa

from pipeline.stages.base import CounterSink, MetricsSink, PlanView, Stage, timed
from pipeline.stages.group import SpillWriter, UnitParts
from pipeline.storage import checkpoints, fsio
from pipeline.storage.content_cache import unit_locality, with_locality
from pipeline.storage.faults import fault_point
from schemas.rollouts import validate_batch

# Rows of one unit at most (~65k rows of ~4 KB: ~256 MB held by a unit in flight).
UNIT_ROWS = 65_536
# Spill parts (units x buckets) a job may have before small row groups are joined: below it parts are too few
# to cost much, and a unit per row group keeps resume and distribution fine-grained.
JOIN_ABOVE_PARTS = 100_000


@dataclass(frozen=True)
class WorkUnit:
    """Rows [first_row, first_row + rows) of one input file (numbered as the contract numbers them: in the
    long form when a layout explodes rows), read from raw rows [skip, skip + read_rows) of one row group."""

    file_index: int
    url: str
    row_group: int
    first_row: int
    rows: int
    skip: int = 0  # raw rows of the row group before this unit
    part: int | None = None  # None: the whole row group
    read_rows: int | None = None  # raw rows to read (None: to the row group's end)
    row_groups: int = 1  # whole row groups from `row_group` on (more than one: small ones read together)

    @property
    def name(self) -> str:
        """Deterministic name of this unit's spill files and completion marker."""
        whole = f"file-{self.file_index:05d}-rg-{self.row_group:05d}"
        if self.row_groups > 1:
            return f"{whole}-{self.row_group + self.row_groups - 1:05d}"
        return whole if self.part is None else f"{whole}-part-{self.part:04d}"

    def read(self, batch_rows: int) -> Iterator[tuple[int, int, pa.Table]]:
        """Yields (row group, file row of the batch's first raw row, table) batches of at most `batch_rows`
        raw rows, row group by row group."""
        first = self.first_row - self.skip
        for group in range(self.row_group, self.row_group + self.row_groups):
            end = 0
            for offset, table in fsio.iter_row_group(self.url, group, batch_rows, self.skip, self.read_rows):
                end = offset + table.num_rows
                yield group, first + offset, table
            first += end


def units_of(files: Iterable, batch_rows: int, num_shards: int = 1, min_part_rows: int = 0,
             join_above_parts: int | None = None) -> list[WorkUnit]:
    """The units of `files` (fsio.InputFile): one per non-empty row group, split into sub-units of at most
    UNIT_ROWS rows in whole batches (by the file's row_group_parts when a layout explodes rows). When that
    makes more than `join_above_parts` (default JOIN_ABOVE_PARTS) units x `num_shards` spill parts,
    consecutive whole row groups of a file are joined while the unit is under `min_part_rows` x
    `num_shards` rows (never past UNIT_ROWS; --min-part-rows, 0: never)."""
    files = list(files)
    units = _units(files, batch_rows, 0)
    threshold = JOIN_ABOVE_PARTS if join_above_parts is None else join_above_parts
    if min_part_rows and len(units) * num_shards > threshold:
        units = _units(files, batch_rows, min(UNIT_ROWS, min_part_rows * num_shards))
    return units


def _units(files: list, batch_rows: int, least: int) -> list[WorkUnit]:
    size = max(1, UNIT_ROWS // batch_rows) * batch_rows
    units = []
    for f in files:
        joined: list[tuple[int, int, int]] = []  # (row group, first row, rows) of the unit being joined

        def close_joined() -> None:
            if joined:
                (group, start, _), rows = joined[0], sum(r for _, _, r in joined)
                span = joined[-1][0] - group + 1  # empty row groups between them read nothing
                units.append(WorkUnit(f.index, f.url, group, start, rows, row_groups=span))
                joined.clear()

        for group, start in enumerate(f.row_group_starts):
            rows = f.row_group_rows[group]
            if not rows:
                continue
            if f.row_group_parts is not None:
                parts = [p for p in f.row_group_parts[group] if p[2]]
            else:
                parts = [(skip, min(size, rows - skip), min(size, rows - skip)) for skip in range(0, rows, size)]
            if len(parts) == 1:
                held = sum(r for _, _, r in joined)
                if joined and (held >= least or held + rows > UNIT_ROWS):
                    close_joined()
                joined.append((group, start, rows))
                continue
            close_joined()
            first = start
            for part, (skip, raw_rows, long_rows) in enumerate(parts):
                units.append(WorkUnit(f.index, f.url, group, first, long_rows, skip, part, raw_rows))
                first += long_rows
        close_joined()
    return units


@dataclass
class UnitTables:
    """A unit's valid rows in batches, and where its error records were spilled (None: it had none)."""

    unit: WorkUnit
    tables: list[pa.Table] = field(default_factory=list)
    errors_url: str | None = None


@dataclass(frozen=True)
class CompletedUnit:
    """A unit whose spill files and marker are written: its spill parts by bucket (compact: engines collect
    one of these per unit, and a job has units x buckets parts), and its error records."""

    name: str
    file_index: int
    parts: UnitParts
    errors_url: str | None


def read_unit(plan: PlanView, unit: WorkUnit, sink: MetricsSink) -> UnitTables:
    """Reads `unit`, applies the plan's layout, validates against its contract (error records spilled
    under _shuffle/errors/UNIT.parquet), timed and counted; each batch carries the unit's cache locality."""
    batches = unit.read(plan.config.batch_rows)
    exploded = unit.first_row  # with a layout, rows are numbered in the long form
    valid, errors = [], []
    footer = plan.files[unit.file_index].footer_sha256
    while True:
        with timed(sink, "read"):
            batch = next(batches, None)
            if batch is not None and plan.layout is not None:
                table = plan.layout.apply(batch[2])
                batch = (batch[0], exploded, table)
                exploded += table.num_rows
        if batch is None:
            break
        group, offset, table = batch
        # Where the caches file the batch's entries: its row group's locality, whatever else the unit reads
        # (schema metadata, stripped before spilling).
        locality = unit_locality(footer, unit.url, group, unit.part)
        sink.count("read", table.num_rows)
        with timed(sink, "validate"):
            good, bad = validate_batch(table, plan.contract, source_file=unit.url, file_index=unit.file_index,
                                       row_offset=offset)
        if bad.num_rows:
            sink.count("errors", bad.num_rows)
            errors.append(bad)
        if good.num_rows:
            valid.append(with_locality(good, locality))
    errors_url = None
    if errors:
        errors_url = fsio.write_parquet_atomic(pa.concat_tables(errors),
                                               fsio.join(plan.spill_dir, "errors", f"{unit.name}.parquet"))
    return UnitTables(unit, valid, errors_url)


def run_stages(stages: Sequence[Stage], tables: UnitTables, sink: MetricsSink, ahead: int = 0) -> UnitTables:
    """Every batch of the unit through `stages` in order (set-up instances). With `ahead` > 0 and more
    than one stage, the first stage runs up to `ahead` batches ahead of the others on a background
    thread, so the second never waits for it (memory: ahead + 1 batches); time the caller spends blocked
    on it is counted as "<second stage>_wait_ms"."""
    if not stages:
        return tables
    first, rest = stages[0], stages[1:]
    if rest and ahead:
        batches = Ahead(first, ahead).map(tables.tables, sink, f"{rest[0].name}_wait")
    else:
        batches = (first.process(table, sink) for table in tables.tables)
    done = []
    for table in batches:
        for stage in rest:
            table = stage.process(table, sink)
        done.append(table)
    return UnitTables(tables.unit, done, tables.errors_url)


def complete_unit(plan: PlanView, tables: UnitTables, sink: MetricsSink) -> CompletedUnit:
    """Spills the unit's rows by bucket (files named after the unit), then writes its completion marker:
    a unit with a marker is complete, whatever crashes after."""
    unit = tables.unit
    with timed(sink, "group"):
        writer = SpillWriter(plan.spill_dir, plan.num_shards, plan.scored_schema, name=unit.name)
        for table in tables.tables:
            writer.add(table.replace_schema_metadata(None))
        buckets = writer.close()
        fault_point("group")
        checkpoints.write_marker(plan.spill_dir, unit.name, buckets, tables.errors_url)
    return CompletedUnit(unit.name, unit.file_index, UnitParts.of(buckets), tables.errors_url)


def resumed_unit(name: str, file_index: int, marker: dict) -> CompletedUnit:
    """A unit completed before a crash, from its marker (checkpoints.completed_units)."""
    return CompletedUnit(name, file_index, UnitParts.of(marker["buckets"]), marker["errors_url"])


class Ahead:
    """Bounded look-ahead: `stage` processes up to `depth` batches ahead of the caller on one background
    thread, results handed back in order. The background thread reports nothing itself: its counts reach
    the caller's sink when the batch is handed over (Beam drops metric updates made outside a bundle's
    thread). Memory: at most depth + 1 batches held."""

    def __init__(self, stage: Stage, depth: int):
        self.stage = stage
        self.depth = depth

    def _process(self, table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        counts = CounterSink()
        return self.stage.process(table, counts), counts.counts

    def map(self, tables: Iterable[pa.Table], sink: MetricsSink, wait_name: str) -> Iterator[pa.Table]:
        pending: list[Future] = []
        with ThreadPoolExecutor(1, thread_name_prefix=f"herolabel-{self.stage.name}") as executor:
            try:
                for table in tables:
                    pending.append(executor.submit(self._process, table))
                    while len(pending) > self.depth:
                        yield self._hand_over(pending.pop(0), sink, wait_name)
                while pending:
                    yield self._hand_over(pending.pop(0), sink, wait_name)
            finally:
                for future in pending:
                    future.cancel()

    @staticmethod
    def _hand_over(future: Future, sink: MetricsSink, wait_name: str) -> pa.Table:
        with timed(sink, wait_name):
            table, counts = future.result()
        for name, n in counts.items():
            sink.count(name, n)
        return table
