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
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.transforms.window import GlobalWindows

from pipeline import progress
from pipeline.buckets import SpillWriter, bucket_sigma_partial, sigma_bar_from_partials, split_by_bucket
from pipeline.outputs import fuse_and_write, write_errors
from pipeline.plan import RunPlan
from pipeline.stages import WORKER_STAGES, ScoreStage, VerifyAhead, VerifyStage, WorkerContext, timed

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
    """WorkUnit -> valid Arrow batches (main output) and error records (tagged "errors", keyed by file)."""

    def __init__(self, plan: RunPlan):
        self.plan = plan

    def process(self, unit):
        for valid, errors in self.plan.read_and_validate(unit, SINK):
            if errors.num_rows:
                yield beam.pvalue.TaggedOutput("errors", (unit.file_index, errors))
            if valid.num_rows:
                yield valid


class Verify(beam.DoFn):
    """VerifyStage (one verifier pool per worker process) behind a bounded look-ahead."""

    def __init__(self, plan: RunPlan, context: WorkerContext):
        self.config = plan.config.verifier
        self.depth = plan.config.engine.verify_ahead
        self.context = context

    def setup(self):
        self.stage = WORKER_STAGES.acquire(VerifyStage(self.config), self.context)
        self.ahead = VerifyAhead(self.stage, self.depth)

    def process(self, table):
        yield from self.ahead.push(table, SINK)

    def finish_bundle(self):
        for table in self.ahead.drain(SINK):
            yield GlobalWindows.windowed_value(table)

    def teardown(self):
        self.ahead.close()
        WORKER_STAGES.release(self.stage)


class Score(beam.DoFn):
    """ScoreStage; the model is loaded once per worker process and shared by its threads."""

    def __init__(self, plan: RunPlan):
        self.config = plan.config.rm

    def setup(self):
        self.stage = WORKER_STAGES.acquire(ScoreStage(self.config), WorkerContext())

    def process(self, table):
        yield self.stage.process(table, SINK)

    def teardown(self):
        WORKER_STAGES.release(self.stage)


class BucketInMemory(beam.DoFn):
    """shuffle=engine: (bucket, Arrow rows) pairs go through the runner's own shuffle."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def process(self, table):
        yield from split_by_bucket(table, self.num_shards)


class SpillToBuckets(beam.DoFn):
    """shuffle=files: one spill file per bucket and bundle; only (bucket, path) goes through the GroupByKey."""

    def __init__(self, plan: RunPlan):
        self.spill_dir = plan.spill_dir
        self.num_shards = plan.num_shards
        self.schema = plan.contract.scored_schema()

    def start_bundle(self):
        self.writer = SpillWriter(self.spill_dir, self.num_shards, self.schema, name=uuid.uuid4().hex)

    def process(self, table):
        with timed(SINK, "group"):
            self.writer.add(table)

    def finish_bundle(self):
        with timed(SINK, "group"):
            written = self.writer.close()
        for bucket, url in written.items():
            yield GlobalWindows.windowed_value((bucket, url))


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
    batches = (
        pipeline
        | "RowGroups" >> beam.Create(plan.units)
        | "Distribute" >> beam.Reshuffle()
        | "ReadAndValidate" >> beam.ParDo(ReadAndValidate(plan)).with_outputs("errors", main="valid")
    )
    verified = batches.valid | "Verify" >> beam.ParDo(Verify(plan, worker_context(options)))
    score = beam.ParDo(Score(plan))
    if is_remote(options) and plan.rm_needs_accelerator:
        verified = verified | "SeparateScoring" >> beam.Reshuffle()
        if config.engine.rm_accelerator != "none":
            score = score.with_resource_hints(accelerator=config.engine.rm_accelerator)
    labelled = verified | "Score" >> score
    if config.shuffle == "files":
        keyed = labelled | "Spill" >> beam.ParDo(SpillToBuckets(plan))
    else:
        keyed = labelled | "Bucket" >> beam.ParDo(BucketInMemory(plan.num_shards))
    groups = keyed | "GroupByPrompt" >> beam.GroupByKey()

    if plan.sigma_mode != "job_mean":
        sigma_bar = pipeline | "KnownSigma" >> beam.Create([plan.fixed_sigma_bar])
    else:
        sigma_bar = groups | "SigmaPartials" >> beam.ParDo(SigmaPartial(plan)) | "SigmaBar" >> beam.CombineGlobally(SigmaMean())
    written = groups | "FuseAndWrite" >> beam.ParDo(FuseAndWrite(plan), sigma_bar=beam.pvalue.AsSingleton(sigma_bar))
    errors = (
        batches.errors
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
