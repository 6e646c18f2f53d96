"""The Apache Beam adapter: wires the engine-neutral stages into a Beam DAG. It computes nothing itself.

    row groups -> read + validate -+-> verify (look-ahead) -> [Reshuffle] -> score -> bucket by prompt_id
                                   |                                                     |
                                   +-> errors -> GroupByKey(file) -> write errors       GroupByKey(bucket)
                                                                                           |
                     sigma partials -> CombineGlobally -> sigma_bar (side input) -> fuse and write shards

Elements are Arrow tables (a batch of rows), never one Python object per row. Locally the in-process
FnApiRunner runs it (optionally multi-process: --direct_num_workers N --direct_running_mode
multi_processing); any other runner takes the same DAG through --runner. On a remote runner the RM
step gets an accelerator resource hint and a Reshuffle separates it from verification, so Dataflow's
right fitting runs them on different worker pools; locally neither is added (the in-process runner
would hold the whole Reshuffle in memory).
"""

from __future__ import annotations

import time
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.transforms.window import GlobalWindows

from pipeline.storage import checkpoints
from pipeline.tools import progress
from pipeline.stages.group import SpillWriter, bucket_sigma_partial, sigma_bar_from_partials, split_by_bucket
from pipeline.stages.write import fuse_and_write, spill_errors, write_errors
from pipeline.plan import RunPlan
from pipeline.stages.base import WORKER_STAGES, UnitEnd, WorkerContext, timed
from pipeline.stages.score import ScoreStage
from pipeline.stages.verify import VerifyAhead, VerifyStage

NAMESPACE = "herolabel"
# Runners that execute in or beside this process; any other runner is a remote one.
LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner",
                 "InteractiveRunner"}


class BeamSink:
    """MetricsSink onto Beam counters (namespace "herolabel"), mirrored to the local progress display."""

    def count(self, name: str, n: int) -> None:
        Metrics.counter(NAMESPACE, name).inc(n)
        progress.add(name, n)


SINK = BeamSink()


class ReadAndValidate(beam.DoFn):
    """WorkUnit -> (unit, valid Arrow batch) pairs, then (unit, UnitEnd) carrying where the unit's error
    records were spilled. A unit completed before a crash (its marker exists) is not read again: its
    marker goes to the "done" output instead."""

    def __init__(self, plan: RunPlan, resumable: bool):
        self.plan = plan
        self.resumable = resumable

    def setup(self):
        self.done = checkpoints.completed_units(self.plan) if self.resumable else {}

    def process(self, unit):
        if unit.name in self.done:
            SINK.count("resumed_units", 1)
            yield beam.pvalue.TaggedOutput("done", (unit.file_index, self.done[unit.name]))
            return
        errors = []
        for valid, bad in self.plan.read_and_validate(unit, SINK):
            if bad.num_rows:
                errors.append(bad)
            if valid.num_rows:
                yield unit.name, valid
        errors_url = spill_errors(self.plan, unit.name, pa.concat_tables(errors)) if errors else None
        yield unit.name, UnitEnd(unit.name, unit.file_index, errors_url)


class Verify(beam.DoFn):
    """VerifyStage (one verifier pool per worker process) behind a bounded look-ahead; UnitEnd markers
    pass through in order."""

    def __init__(self, plan: RunPlan, context: WorkerContext):
        self.config = plan.config.verifier
        self.depth = plan.config.engine.verify_ahead
        self.context = context

    def setup(self):
        self.stage = WORKER_STAGES.acquire(VerifyStage(self.config), self.context)
        self.ahead = VerifyAhead(self.stage, self.depth)

    def process(self, element):
        yield from self.ahead.push(*element, SINK)

    def finish_bundle(self):
        for element in self.ahead.drain(SINK):
            yield GlobalWindows.windowed_value(element)

    def teardown(self):
        self.ahead.close()
        WORKER_STAGES.release(self.stage)


class Score(beam.DoFn):
    """ScoreStage; the model is loaded once per worker process and shared by its threads."""

    def __init__(self, plan: RunPlan):
        self.config = plan.config.rm

    def setup(self):
        self.stage = WORKER_STAGES.acquire(ScoreStage(self.config), WorkerContext())

    def process(self, element):
        unit, value = element
        yield unit, (self.stage.process(value, SINK) if isinstance(value, pa.Table) else value)

    def teardown(self):
        WORKER_STAGES.release(self.stage)


def _errors_of(end: UnitEnd):
    if end.errors_url:
        yield beam.pvalue.TaggedOutput("errors", (end.file_index, end.errors_url))


class BucketInMemory(beam.DoFn):
    """shuffle=engine: (bucket, Arrow rows) pairs go through the runner's own shuffle."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def process(self, element):
        _, value = element
        if isinstance(value, UnitEnd):
            yield from _errors_of(value)
        else:
            yield from split_by_bucket(value, self.num_shards)


class SpillToBuckets(beam.DoFn):
    """shuffle=files: spill files per bucket; only (bucket, path) goes through the GroupByKey.

    per_unit (stages fused, so a unit's batches and then its UnitEnd arrive in order: local runners):
    one file per unit and bucket, named after the unit, and the unit's completion marker once they are
    complete, so a crashed run resumes without redoing the unit. Otherwise (a Reshuffle reorders
    elements before this step on remote runners) one file per bundle and bucket, and no markers.
    """

    def __init__(self, plan: RunPlan, per_unit: bool):
        self.plan = plan
        self.per_unit = per_unit
        self.schema = plan.contract.scored_schema()

    def _writer(self, name: str) -> SpillWriter:
        return SpillWriter(self.plan.spill_dir, self.plan.num_shards, self.schema, name=name)

    def start_bundle(self):
        self.writers: dict[str, SpillWriter] = {}
        self.bundle = uuid.uuid4().hex

    def process(self, element):
        unit, value = element
        if isinstance(value, UnitEnd):
            yield from _errors_of(value)
            if self.per_unit:
                with timed(SINK, "group"):
                    written = self.writers.pop(unit, None) or self._writer(unit)
                    buckets = written.close()
                    checkpoints.fault_point("group")
                    checkpoints.write_marker(self.plan, unit, buckets, value.errors_url)
                yield from buckets.items()
            return
        key = unit if self.per_unit else self.bundle
        with timed(SINK, "group"):
            if key not in self.writers:
                self.writers[key] = self._writer(key)
            self.writers[key].add(value)

    def finish_bundle(self):
        with timed(SINK, "group"):
            written = [w.close() for w in self.writers.values()]
        self.writers = {}
        for buckets in written:
            for bucket, url in buckets.items():
                yield GlobalWindows.windowed_value((bucket, url))


def _resumed(element):
    """A unit finished before a crash: its spill files (main) and error records (tagged)."""
    file_index, marker = element
    yield from marker["buckets"].items()
    if marker["errors_url"]:
        yield beam.pvalue.TaggedOutput("errors", (file_index, marker["errors_url"]))


class SigmaMean(beam.CombineFn):
    """sigma_bar from per-bucket (sum, count) partials; kept as a list so the sum is order-independent."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, partial):
        accumulator.append(partial)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [partial for accumulator in accumulators for partial in accumulator]

    def extract_output(self, accumulator):
        return sigma_bar_from_partials(accumulator)


class SigmaPartial(beam.DoFn):
    def __init__(self, plan: RunPlan):
        self.has_sample_index = plan.has_sample_index

    def process(self, element):
        yield bucket_sigma_partial(element[1], SINK, self.has_sample_index)


class FuseAndWrite(beam.DoFn):
    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, element, sigma_bar):
        yield fuse_and_write(self.plan, element[0], element[1], sigma_bar, SINK)


class WriteErrors(beam.DoFn):
    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, element):
        yield write_errors(self.plan, element[0], element[1])


def is_remote(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return bool(runner) and str(runner).split(".")[-1] not in LOCAL_RUNNERS


def worker_context(options: PipelineOptions) -> WorkerContext:
    """How many SDK processes share a worker host, as far as the options tell; the cores are counted on
    the worker itself. Local multi-process mode: direct_num_workers. Dataflow: one SDK process per vCPU
    unless --experiments=no_use_multiple_sdk_containers (then one). Portable runners (Flink, Spark):
    --sdk_worker_parallelism when set. Otherwise one."""
    if not is_remote(options):
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing":
            return WorkerContext(processes_on_host=max(1, direct.direct_num_workers or 1))
        return WorkerContext()
    if str(options.view_as(StandardOptions).runner).split(".")[-1] == "DataflowRunner":
        experiments = options.view_as(DebugOptions).experiments or []
        single = "no_use_multiple_sdk_containers" in experiments
        return WorkerContext(processes_on_host=1 if single else WorkerContext.ONE_PER_CORE)
    parallelism = int(options.view_as(PortableOptions).sdk_worker_parallelism or 0)  # Beam parses it as text
    return WorkerContext(processes_on_host=parallelism if parallelism > 0 else 1)


def build(pipeline: beam.Pipeline, plan: RunPlan, options: PipelineOptions):
    """Adds the labeling DAG to `pipeline`; returns the PCollections of written data and error files."""
    config = plan.config
    separate_scoring = is_remote(options) and plan.rm_needs_accelerator
    # Per-unit spill files and completion markers need a unit's elements in order: fused stages, no Reshuffle.
    per_unit = config.shuffle == "files" and not separate_scoring
    batches = (
        pipeline
        | "RowGroups" >> beam.Create(plan.units)
        | "Distribute" >> beam.Reshuffle()
        | "ReadAndValidate" >> beam.ParDo(ReadAndValidate(plan, resumable=per_unit)).with_outputs("done", main="valid")
    )
    verified = batches.valid | "Verify" >> beam.ParDo(Verify(plan, worker_context(options)))
    score = beam.ParDo(Score(plan))
    if separate_scoring:
        verified = verified | "SeparateScoring" >> beam.Reshuffle()
        if config.engine.rm_accelerator != "none":
            score = score.with_resource_hints(accelerator=config.engine.rm_accelerator)
    labelled = verified | "Score" >> score
    if config.shuffle == "files":
        keyed = labelled | "Spill" >> beam.ParDo(SpillToBuckets(plan, per_unit)).with_outputs("errors", main="rows")
    else:
        keyed = labelled | "Bucket" >> beam.ParDo(BucketInMemory(plan.num_shards)).with_outputs("errors", main="rows")
    resumed = batches.done | "ResumedUnits" >> beam.FlatMap(_resumed).with_outputs("errors", main="rows")
    groups = (keyed.rows, resumed.rows) | "AllRows" >> beam.Flatten() | "GroupByPrompt" >> beam.GroupByKey()

    if plan.sigma_mode != "job_mean":
        sigma_bar = pipeline | "KnownSigma" >> beam.Create([plan.fixed_sigma_bar])
    else:
        sigma_bar = (groups | "SigmaPartials" >> beam.ParDo(SigmaPartial(plan))
                     | "SigmaBar" >> beam.CombineGlobally(SigmaMean()))
    written = groups | "FuseAndWrite" >> beam.ParDo(FuseAndWrite(plan), sigma_bar=beam.pvalue.AsSingleton(sigma_bar))
    errors = (
        (keyed.errors, resumed.errors)
        | "AllErrors" >> beam.Flatten()
        | "GroupErrorsByFile" >> beam.GroupByKey()
        | "WriteErrors" >> beam.ParDo(WriteErrors(plan))
    )
    return written, errors


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


def _local_runner(options: PipelineOptions):
    """The in-process FnApiRunner unless --runner names another (the default would fetch a Prism binary)."""
    if options.view_as(StandardOptions).runner:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def run(plan: RunPlan, show_progress: bool) -> dict:
    """Runs the DAG to completion; returns Beam's counters (when the runner reports them) and wall time."""
    options = check_beam_args(plan.config.beam_args)
    runner = _local_runner(options)
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, plan, options)
    with progress.ProgressDisplay(plan.input_rows, enabled=show_progress and runner is not None):
        result = pipeline.run()
        result.wait_until_finish()
    counters = {}
    try:
        for counter in result.metrics().query()["counters"]:
            counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    except (NotImplementedError, AttributeError, KeyError):
        counters = {}
    return {"name": "beam", "counters": counters, "wall_s": time.monotonic() - started}
