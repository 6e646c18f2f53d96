"""The Apache Beam DAG. It only moves, groups and places data; every value comes from transforms/.

    row groups -> read -> validate -+-> verify (CPU process pool) -> score (RM) -> bucket by prompt_id
                                    |                                                    |
                                    +-> errors -> GroupByKey(file) -> errors/*.parquet   GroupByKey(bucket)
                                                                                          |
                      sigma partials -> CombineGlobally -> sigma_bar (side input) -> fuse -> data/*.parquet

Elements are Arrow tables (a batch of rows), never one Python object per row. A bucket holds whole
prompt groups (bucket = crc32(prompt_id) % shards), so a group is complete even when its rows come
from different files. Locally the in-process FnApiRunner runs it; any other Beam runner takes the same
DAG through --runner and its own flags.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from pipeline import io, progress
from pipeline.config import ConfigError, PipelineConfig, name_options
from schemas.rollouts import ORDER, PROMPT_ID, InputContract, bucket_of, validate_batch
from transforms.hero import fuse, sigma_partial
from transforms.reward_models import make_reward_model
from transforms.verifier import VerifierPool, verify_table

log = logging.getLogger(__name__)
NAMESPACE = "herolabel"


@dataclass(frozen=True)
class RunPlan:
    """What the driver decides before any data moves: inputs, contract, shard count, output metadata."""

    config: PipelineConfig
    files: tuple[io.InputFile, ...]
    contract: InputContract
    num_shards: int
    metadata: dict  # stored in every output file (sigma_bar is added per run)

    @property
    def input_rows(self) -> int:
        return sum(f.num_rows for f in self.files)


def _count(name: str, n: int):
    Metrics.counter(NAMESPACE, name).inc(n)
    progress.add(name, n)


class _StageTimer:
    """Adds the wall time of a block to the Beam counter "<stage>_ms" (busy time per stage, in the manifest)."""

    def __init__(self, stage: str):
        self.counter = Metrics.counter(NAMESPACE, f"{stage}_ms")

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.counter.inc(int(1000 * (time.perf_counter() - self.started)))


class ReadRowGroup(beam.DoFn):
    """(file index, url, row group, first row) -> (url, file index, row offset, pa.Table) batches."""

    def __init__(self, batch_rows: int):
        self.batch_rows = batch_rows

    def process(self, task):
        file_index, url, row_group, first_row = task
        batches = io.iter_row_group(url, row_group, self.batch_rows)
        while True:
            with _StageTimer("read"):
                batch = next(batches, None)
            if batch is None:
                return
            offset, table = batch
            _count("read", table.num_rows)
            yield url, file_index, first_row + offset, table


class ValidateRows(beam.DoFn):
    """Splits each batch into valid rows (main output) and error records (tagged "errors", keyed by file)."""

    def __init__(self, contract: InputContract):
        self.contract = contract

    def process(self, element):
        url, file_index, offset, table = element
        with _StageTimer("validate"):
            valid, errors = validate_batch(table, self.contract, source_file=url, file_index=file_index,
                                           row_offset=offset)
        if errors.num_rows:
            _count("errors", errors.num_rows)
            yield beam.pvalue.TaggedOutput("errors", (file_index, errors))
        if valid.num_rows:
            yield valid


class VerifyAnswers(beam.DoFn):
    """math-verify on a pool of worker processes started once per DoFn instance (setup)."""

    def __init__(self, config):
        self.config = config
        self.pool = None

    def setup(self):
        self.pool = VerifierPool(self.config)
        self.pool.start()

    def process(self, table):
        restarts = self.pool.restarts
        with _StageTimer("verify"):
            labelled = verify_table(table, self.pool)
        if self.pool.restarts > restarts:
            Metrics.counter(NAMESPACE, "verifier_worker_restarts").inc(self.pool.restarts - restarts)
        _count("verified", table.num_rows)
        yield labelled

    def teardown(self):
        if self.pool is not None:
            self.pool.close()


def _load_reward_model(config):
    model = make_reward_model(config)
    model.load()
    return model


class ScoreRewards(beam.DoFn):
    """The reward-model stage. The model is loaded once per worker process and shared by every DoFn
    instance (thread) there through Beam's Shared handle, as RunInference does; never per batch."""

    def __init__(self, config):
        self.config = config
        self._shared = Shared()
        self.model = None

    def setup(self):
        self.model = self._shared.acquire(lambda: _load_reward_model(self.config), tag=repr(self.config))

    def process(self, table):
        with _StageTimer("score"):
            scored = self.model.score_table(table)
        _count("scored", table.num_rows)
        yield scored


def _split_by_bucket(table: pa.Table, num_shards: int):
    """Yields (bucket, rows of that bucket) for the buckets present in `table`."""
    buckets = bucket_of(table.column(PROMPT_ID), num_shards)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        yield int(sorted_buckets[start]), table.take(pa.array(order[start:stop]))


class BucketInMemory(beam.DoFn):
    """shuffle=engine: (bucket, Arrow rows) pairs go through the runner's own shuffle."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def process(self, table):
        yield from _split_by_bucket(table, self.num_shards)


class SpillToBuckets(beam.DoFn):
    """shuffle=files: appends each bucket's rows to one Parquet file per bundle; emits (bucket, path).

    Rows are buffered per bucket and flushed as row groups once `flush_rows` rows are pending, so
    memory stays bounded whatever the bundle size. Only file paths go through the GroupByKey.
    """

    def __init__(self, spill_dir: str, num_shards: int, schema: pa.Schema, flush_rows: int = 16384):
        self.spill_dir = spill_dir
        self.num_shards = num_shards
        self.schema = schema
        self.flush_rows = flush_rows

    def start_bundle(self):
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_rows = 0
        self._writers: dict[int, tuple[str, object, pq.ParquetWriter]] = {}

    def process(self, table):
        with _StageTimer("group"):
            for bucket, rows in _split_by_bucket(table, self.num_shards):
                self._pending.setdefault(bucket, []).append(rows)
            self._pending_rows += table.num_rows
            if self._pending_rows >= self.flush_rows:
                self._flush()

    def _flush(self):
        import fsspec

        for bucket, parts in self._pending.items():
            if bucket not in self._writers:
                url = io.join(self.spill_dir, f"bucket-{bucket:05d}", f"{uuid.uuid4().hex}.parquet")
                fs, path = fsspec.core.url_to_fs(url)
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                handle = fs.open(path, "wb")
                self._writers[bucket] = (url, handle, pq.ParquetWriter(handle, self.schema, compression="lz4"))
            self._writers[bucket][2].write_table(pa.concat_tables(parts))
        self._pending = {}
        self._pending_rows = 0

    def finish_bundle(self):
        with _StageTimer("group"):
            self._flush()
            for _, handle, writer in self._writers.values():
                writer.close()
                handle.close()
        for bucket, (url, _, _) in sorted(self._writers.items()):
            yield GlobalWindows.windowed_value((bucket, url))
        self._writers = {}


def _load_bucket(parts, columns=None) -> pa.Table:
    """A bucket's rows from its spill files (paths) or Arrow tables (shuffle=engine)."""
    parts = list(parts)
    if parts and isinstance(parts[0], str):
        import fsspec

        tables = []
        for url in sorted(parts):
            with fsspec.open(url, "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        return pa.concat_tables(tables)
    tables = [t.select(columns) if columns else t for t in parts]
    return pa.concat_tables(tables)


def _bucket_sigma_partial(element) -> tuple[float, int]:
    with _StageTimer("sigma"):
        return sigma_partial(_load_bucket(element[1], [PROMPT_ID, ORDER, "rm_score"]))


class SigmaMean(beam.CombineFn):
    """sigma_bar = sum of sigma_u / number of groups, from per-bucket (sum, count) partials."""

    def create_accumulator(self):
        return 0.0, 0

    def add_input(self, accumulator, partial):
        return accumulator[0] + partial[0], accumulator[1] + partial[1]

    def merge_accumulators(self, accumulators):
        sums, counts = zip(*accumulators)
        return math.fsum(sums), sum(counts)

    def extract_output(self, accumulator):
        total, count = accumulator
        return total / count if count else 0.0


class FuseAndWrite(beam.DoFn):
    """HERO fusion of one bucket of complete groups, written as data/part-BBBBB-of-SSSSS.parquet."""

    def __init__(self, plan: RunPlan):
        self.hero = plan.config.hero
        self.output_dir = io.join(plan.config.output, "data")
        self.schema = plan.contract.output_schema()
        self.metadata = plan.metadata
        self.num_shards = plan.num_shards

    def process(self, element, sigma_bar):
        bucket, parts = element
        with _StageTimer("group"):
            table = _load_bucket(parts)
        with _StageTimer("fuse"):
            fused = fuse(table, self.hero, sigma_bar).drop_columns([ORDER])
            fused = fused.select(self.schema.names).cast(self.schema)
        url = io.join(self.output_dir, f"part-{bucket:05d}-of-{self.num_shards:05d}.parquet")
        with _StageTimer("write"):
            io.write_parquet_atomic(fused, url, {**self.metadata, "sigma_bar": sigma_bar, "shard": bucket})
        _count("written", fused.num_rows)
        yield url, fused.num_rows


class WriteErrors(beam.DoFn):
    """All error records of one input file, written as errors/part-FFFFF.parquet sorted by source row."""

    def __init__(self, output: str):
        self.output_dir = io.join(output, "errors")

    def process(self, element):
        file_index, tables = element
        errors = pa.concat_tables(list(tables)).sort_by("source_row")
        url = io.join(self.output_dir, f"part-{file_index:05d}.parquet")
        io.write_parquet_atomic(errors, url)
        yield url, errors.num_rows


def build(pipeline: beam.Pipeline, plan: RunPlan):
    """Adds the labeling DAG to `pipeline`; returns the PCollections of written data and error files."""
    config = plan.config
    tasks = [(f.index, f.url, rg, start) for f in plan.files
             for rg, start in enumerate(f.row_group_starts) if f.row_group_rows[rg]]
    batches = (
        pipeline
        | "RowGroups" >> beam.Create(tasks)
        | "Distribute" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadRowGroup(config.batch_rows))
    )
    validated = batches | "Validate" >> beam.ParDo(ValidateRows(plan.contract)).with_outputs("errors", main="valid")
    labelled = (
        validated.valid
        | "Verify" >> beam.ParDo(VerifyAnswers(config.verifier))
        | "Score" >> beam.ParDo(ScoreRewards(config.rm))
    )
    if config.shuffle == "files":
        schema = plan.contract.scored_schema()
        keyed = labelled | "Spill" >> beam.ParDo(SpillToBuckets(io.join(config.output, "_shuffle"), plan.num_shards,
                                                                 schema))
    else:
        keyed = labelled | "Bucket" >> beam.ParDo(BucketInMemory(plan.num_shards))
    groups = keyed | "GroupByPrompt" >> beam.GroupByKey()

    if config.rm.backend == "none":
        sigma_bar = pipeline | "NoSigma" >> beam.Create([None])
    elif config.hero.sigma_bar is not None:
        sigma_bar = pipeline | "FixedSigma" >> beam.Create([float(config.hero.sigma_bar)])
    else:
        # With spill files this reads each bucket's rm_score column once more before fusion reads the whole
        # bucket: sigma_bar must be complete before any shard is fused, and holding buckets until then would
        # make memory grow with the job.
        sigma_bar = (
            groups
            | "SigmaPartials" >> beam.Map(_bucket_sigma_partial)
            | "SigmaBar" >> beam.CombineGlobally(SigmaMean())
        )
    written = groups | "FuseAndWrite" >> beam.ParDo(FuseAndWrite(plan), sigma_bar=beam.pvalue.AsSingleton(sigma_bar))
    errors = (
        validated.errors
        | "GroupErrorsByFile" >> beam.GroupByKey()
        | "WriteErrors" >> beam.ParDo(WriteErrors(config.output))
    )
    return written, errors


def make_plan(config: PipelineConfig, package_version: str) -> RunPlan:
    """Inspects the inputs (footers only), derives the contract and shard count, checks the RM settings."""
    files = tuple(io.inspect_inputs(config.input))
    contract = InputContract.from_file_schemas([f.schema for f in files])
    model = make_reward_model(config.rm)
    if hasattr(model, "check_schema"):
        try:
            model.check_schema(contract.input_schema())
        except ValueError as exc:
            raise ConfigError(name_options(str(exc))) from exc
    total = sum(f.num_rows for f in files)
    num_shards = max(1, math.ceil(total / config.rows_per_shard))
    metadata = {
        "herolabel_version": package_version,
        "config": config.to_dict(),
        "reward_model": model.identity(),
    }
    return RunPlan(config, files, contract, num_shards, metadata)


def _local_runner(options: PipelineOptions):
    """The in-process FnApiRunner unless --runner names another (the default would fetch a Prism binary)."""
    if options.view_as(StandardOptions).runner:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def check_beam_args(beam_args: tuple[str, ...]) -> PipelineOptions:
    """PipelineOptions from pass-through flags; an unknown flag fails here instead of being dropped."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - the same registry PipelineOptions parses with
    _, unknown = parser.parse_known_args(list(beam_args))
    if unknown:
        raise ValueError(f"unknown option(s): {' '.join(unknown)}")
    return PipelineOptions(list(beam_args))


def run_beam(plan: RunPlan, show_progress: bool) -> dict:
    """Runs the DAG to completion; returns Beam's counters (when the runner reports them) and wall time."""
    options = check_beam_args(plan.config.beam_args)
    runner = _local_runner(options)
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, plan)
    with progress.ProgressDisplay(plan.input_rows, enabled=show_progress and runner is not None):
        result = pipeline.run()
        result.wait_until_finish()
    counters = {}
    try:
        for counter in result.metrics().query()["counters"]:
            counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    except (NotImplementedError, AttributeError, KeyError):
        counters = {}
    return {"counters": counters, "wall_s": time.monotonic() - started}
