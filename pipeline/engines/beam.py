"""The Apache Beam adapter: the plan's units of work and stage list as a Beam DAG. It computes nothing itself.

    units -> read + validate -> [stage group] -> ... -> spill + marker -+-> part index (one element) -> buckets
                                                                        +-> errors -> GroupByKey(file) -> write
    resumed units (markers found by the driver) -----------------------^
    buckets -> fusion partials -> CombineGlobally -> job statistic (side input: HERO's sigma_bar)
    buckets -> fuse, write (side inputs: the job statistic, the part index)

Elements are units of work (pipeline/stages/unit.py: a row group's Arrow batches, carried whole), never
one Python object per row; each unit is spilled and marked complete by the step that completes it, so
every runner, local or remote, writes the same completion markers and a killed job resumes. Completed
units, not their units x buckets spill parts, are what the runner collects: their parts go into one
compact index (group.PartIndex, a side input) that the bucket steps look their parts up in, instead of a
GroupByKey of one part reference per unit and bucket (200,000 at 10M rows; the local driver's peak fell
648 -> 632 MB at that size). With shuffle=engine the rows themselves go through a GroupByKey on the bucket. Locally the
in-process FnApiRunner runs it (optionally multi-process: --direct_num_workers N --direct_running_mode
multi_processing), with every stage of a unit in one step (the first runs --verify-ahead batches ahead
of the next); any other runner takes the same DAG through --runner. On a remote runner the stage list
is cut where placement changes: a Reshuffle before each group, and an accelerator resource hint on a
group whose stages need one, so Dataflow's right fitting runs them on different worker pools; locally
neither is added (the in-process runner would hold the whole Reshuffle in memory).
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from pipeline.plan import RunPlan
from pipeline.stages.base import WORKER_STAGES, WorkerContext, timed
from pipeline.stages.group import PartIndex, bucket_partial, split_by_bucket
from pipeline.stages.unit import CompletedUnit, UnitTables, complete_unit, read_unit, run_stages
from pipeline.stages.write import fuse_and_write, write_errors
from pipeline.tools import progress

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


class ReadUnit(beam.DoFn):
    """WorkUnit -> UnitTables (valid batches; error records spilled)."""

    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, unit):
        yield read_unit(self.plan, unit, SINK)


class RunStages(beam.DoFn):
    """One group of the plan's stages over a unit; each stage set up once per worker process and shared
    by its threads (released at teardown)."""

    def __init__(self, plan: RunPlan, group: int, separate: bool, context: WorkerContext):
        self.plan = plan
        self.group = group
        self.separate = separate
        self.context = context

    def setup(self):
        specs = self.plan.stage_groups(self.separate)[self.group]
        self.stages = [WORKER_STAGES.acquire(spec, self.context) for spec in specs]

    def process(self, tables: UnitTables):
        yield run_stages(self.stages, tables, SINK, self.plan.config.engine.verify_ahead)

    def teardown(self):
        for stage in getattr(self, "stages", []):
            WORKER_STAGES.release(stage)


class SpillUnit(beam.DoFn):
    """shuffle=files: the unit's spill object and completion marker; only the CompletedUnit goes on."""

    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, tables: UnitTables):
        yield complete_unit(self.plan, tables, SINK)


class BucketUnit(beam.DoFn):
    """shuffle=engine: (bucket, Arrow rows) pairs go through the runner's own shuffle (no markers)."""

    def __init__(self, plan: RunPlan):
        self.num_shards = plan.num_shards

    def process(self, tables: UnitTables):
        if tables.errors_url:
            yield beam.pvalue.TaggedOutput("errors", (tables.unit.file_index, tables.errors_url))
        with timed(SINK, "group"):
            pairs = [pair for table in tables.tables for pair in split_by_bucket(table, self.num_shards)]
        yield from pairs


def _errors_of(done: CompletedUnit):
    """A completed unit's error records (now or before a crash), keyed by input file."""
    if done.errors_url:
        yield done.file_index, done.errors_url


class IndexParts(beam.CombineFn):
    """Every completed unit's spill parts, laid out by bucket once (group.PartIndex)."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, done: CompletedUnit):
        accumulator.append(done.parts)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [parts for accumulator in accumulators for parts in accumulator]

    def extract_output(self, accumulator):
        return PartIndex(accumulator)


def _buckets_of(index: PartIndex) -> list[int]:
    return index.buckets.tolist()


def _bucket_parts(element, index: PartIndex | None):
    """(bucket, parts): a bucket number looked up in the part index, or a GroupByKey's (bucket, tables)."""
    return (element, index.parts(element)) if index is not None else element


class FusionStatistic(beam.CombineFn):
    """A pass of the fusion's job statistic (HERO: sigma_bar) from per-bucket partials, kept as a list so
    the fusion's own combine sees them all at once (exact, order-independent). Each partial arrives with
    the statistic of the pass before, which the combine takes too."""

    def __init__(self, plan: RunPlan):
        self.fusion = plan.fusion

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, partial):
        accumulator.append(partial)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [partial for accumulator in accumulators for partial in accumulator]

    def extract_output(self, accumulator):
        earlier = accumulator[0][1] if accumulator else self.fusion.known_statistic()
        return self.fusion.combine([partial for partial, _ in accumulator], earlier)


class FusionPartial(beam.DoFn):
    def __init__(self, plan: RunPlan):
        self.fusion = plan.fusion
        self.has_sample_index = plan.has_sample_index

    def process(self, element, earlier, index=None):
        parts = _bucket_parts(element, index)[1]
        yield bucket_partial(self.fusion, parts, SINK, self.has_sample_index, earlier), earlier


class FuseAndWrite(beam.DoFn):
    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, element, statistic, index=None):
        bucket, parts = _bucket_parts(element, index)
        yield fuse_and_write(self.plan, bucket, parts, statistic, SINK)


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


def _title(stages) -> str:
    return "+".join(stage.name.title() for stage in stages)


def build(pipeline: beam.Pipeline, plan: RunPlan, options: PipelineOptions, pending: list | None = None,
          resumed: list[CompletedUnit] = ()):
    """Adds the labeling DAG to `pipeline` for the `pending` units (default: all) plus the spill files of
    `resumed` ones; returns the PCollections of written data and error files."""
    config = plan.config
    remote = is_remote(options)
    context = worker_context(options)
    units = plan.units if pending is None else pending
    elements = (pipeline | "Units" >> beam.Create(units) | "Distribute" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadUnit(plan)))
    for index, group in enumerate(plan.stage_groups(separate=remote)):
        step = beam.ParDo(RunStages(plan, index, remote, context))
        accelerator = any(stage.resources.accelerator for stage in group)
        if remote and index:
            elements = elements | f"Separate{_title(group)}" >> beam.Reshuffle()
        if remote and accelerator and config.engine.rm_accelerator != "none":
            step = step.with_resource_hints(accelerator=config.engine.rm_accelerator)
        elements = elements | _title(group) >> step
    if config.shuffle == "files":
        done = ((elements | "Spill" >> beam.ParDo(SpillUnit(plan)),
                 pipeline | "ResumedUnits" >> beam.Create(list(resumed))) | "AllUnits" >> beam.Flatten())
        unit_errors = done | "UnitErrors" >> beam.FlatMap(_errors_of)
        index = done | "IndexParts" >> beam.CombineGlobally(IndexParts())
        # The Reshuffle spreads the buckets over workers (the steps after it would otherwise run fused with
        # the one element they come from).
        groups = (index | "Buckets" >> beam.FlatMap(_buckets_of)
                  | "DistributeBuckets" >> beam.Reshuffle())
        look_up = {"index": beam.pvalue.AsSingleton(index)}
    else:  # no markers, so nothing is resumed
        keyed = elements | "Bucket" >> beam.ParDo(BucketUnit(plan)).with_outputs("errors", main="rows")
        groups = keyed.rows | "GroupByPrompt" >> beam.GroupByKey()
        unit_errors, look_up = keyed.errors, {}

    statistic = pipeline | "KnownStatistic" >> beam.Create([plan.fusion.known_statistic()])
    for pass_ in range(plan.fusion.rounds):  # each pass sees the statistic of the one before
        suffix = str(pass_ + 1) if pass_ else ""
        statistic = (groups | f"FusionPartials{suffix}" >> beam.ParDo(
                         FusionPartial(plan), earlier=beam.pvalue.AsSingleton(statistic), **look_up)
                     | f"FusionStatistic{suffix}" >> beam.CombineGlobally(FusionStatistic(plan)))
    written = groups | "FuseAndWrite" >> beam.ParDo(FuseAndWrite(plan), statistic=beam.pvalue.AsSingleton(statistic),
                                                   **look_up)
    errors = (
        unit_errors
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


def run(plan: RunPlan, pending: list, resumed: list[CompletedUnit], show_progress: bool) -> dict:
    """Runs the DAG to completion; returns Beam's counters (when the runner reports them) and wall time."""
    options = check_beam_args(plan.config.beam_args)
    runner = _local_runner(options)
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, plan, options, pending, resumed)
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
