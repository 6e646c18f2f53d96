"""What the driver decides before any data moves: inputs, contract, the declared stage list, units of work,
shards, metadata, and the fingerprint a resume must match."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from pipeline.storage import staging, fsio
from pipeline.storage.fsio import InputError
from pipeline.config import ConfigError, PipelineConfig, name_options
from pipeline.stages.base import Stage, placement_groups
from pipeline.stages.fallback import FallbackStage
from pipeline.stages.score import ScoreStage
from pipeline.stages import unit as unit_module
from pipeline.stages.unit import WorkUnit, units_of
from pipeline.stages.verify import VerifyStage
from schemas.layouts import Layout, LayoutError, choose_layout, missing_columns_hint
from schemas.rollouts import FALLBACK_FIELDS, RM_FIELDS, SAMPLE_INDEX, VERIFIER_FIELDS, InputContract, SchemaError
from transforms.fuse import Fusion
from transforms.judge import judge_backend
from transforms.rm import make_reward_model
from transforms.rm.signals import SignalSet, signal_fields

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunPlan:
    """Inputs, the unified contract, shard count and output metadata of one run."""

    config: PipelineConfig
    files: tuple[fsio.InputFile, ...]
    contract: InputContract
    num_shards: int
    metadata: dict  # stored in every output file (with the fusion's shard metadata: HERO's sigma_bar)
    stages: tuple[Stage, ...]  # the row stages, in order; engines place each by its resources
    fusion: Fusion  # how verdicts and scores become rewards, per prompt group (transforms/fuse/)
    layout: Layout | None = None  # another tool's layout, applied to every batch read (schemas/layouts.py)

    @property
    def input_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def units(self) -> list[WorkUnit]:
        """Every unit of work (pipeline/stages/unit.py), in input order."""
        return units_of(self.files, self.config.batch_rows, self.num_shards, self.config.min_part_rows)

    @property
    def spill_dir(self) -> str:
        return fsio.join(self.config.output, "_shuffle")

    @property
    def needs_accelerator(self) -> bool:
        """Whether some stage must run on accelerator workers (engines then provide some)."""
        return any(stage.resources.accelerator for stage in self.stages)

    def stage_groups(self, separate: bool) -> list[tuple[Stage, ...]]:
        """The stage list cut where placement changes (separate=True: each group runs where its
        resources are), or whole (one worker runs every stage, as in-process runners do)."""
        return placement_groups(self.stages) if separate else [self.stages]

    def fingerprint(self) -> dict:
        """Everything that decides the run's files; a resume must match it exactly."""
        config = self.config
        return {
            "labeling": config.labeling_dict(),
            "pairs": dataclasses.asdict(config.pairs),
            "reward_model": self.metadata["reward_model"],
            **{key: self.metadata[key] for key in ("reward_models", "fallback_verifier") if key in self.metadata},
            "herolabel_version": self.metadata["herolabel_version"],
            "inputs": [[f.url, f.num_rows, list(f.row_group_rows), f.footer_sha256] for f in self.files],
            "num_shards": self.num_shards,
            "batch_rows": config.batch_rows,
            "min_part_rows": config.min_part_rows,
            "shuffle": config.shuffle,
        }

    @property
    def has_sample_index(self) -> bool:
        """Whether rows carry sample_index, which makes (prompt_id, sample_index) a row's identity."""
        return SAMPLE_INDEX in self.contract.schema.names

    @property
    def signal_fields(self) -> list:
        """rm_score__NAME and rm_status__NAME per reward signal when there are several (else none)."""
        return signal_fields(self.config.rm_signals)

    @property
    def judge_fields(self) -> list:
        """fallback_verdict when the run has a fallback judge (else none)."""
        return FALLBACK_FIELDS if self.config.fallback.enabled else []

    @property
    def output_schema(self):
        """The schema of every data shard: input columns, verifier columns (the judge's too), RM columns (each
        signal's too), the fusion's columns."""
        return self.contract.output_schema(self.fusion.fields, self.signal_fields, self.judge_fields)

    @property
    def scored_schema(self):
        """Rows after verify and score, before fusion: what the group stage shuffles."""
        return self.contract.scored_schema(self.signal_fields, self.judge_fields)


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
            files = tuple(_long_form_counts(f, layout.explode, config.batch_rows) for f in files)
    fusion = config.make_fusion()
    added = [f.name for f in VERIFIER_FIELDS + FALLBACK_FIELDS + RM_FIELDS + signal_fields(config.rm_signals)
             + list(fusion.fields)]
    try:
        contract = InputContract.from_file_schemas(schemas, [f.url for f in files], added)
    except SchemaError as exc:
        if layout is None and "column" in str(exc):
            raise SchemaError(f"{exc}; {missing_columns_hint(files[0].schema)}") from exc
        raise
    if not any(f.num_rows for f in files):
        raise InputError(f"--input {config.input}: the input is empty ({len(files)} Parquet file(s), 0 rows: "
                         f"{', '.join(f.url for f in files[:3])}{' ...' if len(files) > 3 else ''})")
    config, identities = _resolve_reward_models(config, contract)
    config, judge = _resolve_judge(config) if config.fallback.enabled else (config, None)
    try:
        fusion.check_reward_model(identities[config.fusion_signal])
    except ValueError as exc:
        raise ConfigError(name_options(str(exc))) from exc
    total = sum(f.num_rows for f in files)
    num_shards = max(1, math.ceil(total / config.rows_per_shard))
    metadata = {
        "herolabel_version": package_version,
        "config": config.labeling_dict(),
        "reward_model": identities[config.fusion_signal],
    }
    if config.rm_signals:  # several reward signals: each one's identity (one model: exactly as before)
        metadata["reward_models"] = {s.name: identities[s.name] for s in config.rm_signals}
        metadata["fusion_rm"] = config.fusion_signal
    if layout is not None:
        metadata["layout"] = layout.name
    if judge is not None:
        metadata["fallback_verifier"] = judge
    stages = (VerifyStage(config.verifier),
              *((FallbackStage(config.fallback),) if config.fallback.enabled else ()),
              ScoreStage(SignalSet(config.rm_signals, config.fusion_signal, config.rm_max_resident)
                         if config.rm_signals else config.rm))
    return RunPlan(config, files, contract, num_shards, metadata, stages, fusion, layout)


def _resolve_reward_models(config: PipelineConfig, contract: InputContract) -> tuple[PipelineConfig, dict]:
    """Resolves and checks every reward model (config, tokenizer, weights, head, one output) and column before
    any data moves; returns the config with each hub model pinned to the commit resolved here (every worker
    loads that commit, even if the branch moves during the run) and each signal's identity (key None: the
    one unnamed model)."""
    named = [(s.name, s.config) for s in config.rm_signals] or [(None, config.rm)]
    identities, pinned = {}, {}
    for name, rm in named:
        model = make_reward_model(rm)
        try:
            model.check_schema(contract.input_schema())
            identities[name] = model.identity()
        except ValueError as exc:
            where = f"reward signal {name!r}: " if name is not None else ""
            raise ConfigError(where + name_options(str(exc))) from exc
        commit = identities[name].get("commit")
        pinned[name] = dataclasses.replace(rm, revision=commit) if commit and rm.revision != commit else rm
    if config.rm_signals:
        signals = tuple(dataclasses.replace(s, config=pinned[s.name]) for s in config.rm_signals)
        config = dataclasses.replace(config, rm_signals=signals)
    else:
        config = dataclasses.replace(config, rm=pinned[None])
    return config, identities


def _resolve_judge(config: PipelineConfig) -> tuple[PipelineConfig, dict]:
    """Resolves the fallback judge before any data moves (a hub id to the commit every worker loads) and
    warns when its published licence restricts use; returns the config and the judge's identity."""
    judge = config.fallback
    warning = judge.licence_warning()
    if warning:
        log.warning(warning)
    try:
        identity = judge_backend(judge).identity()
    except ValueError as exc:
        raise ConfigError(name_options(str(exc))) from exc
    commit = identity.get("commit")
    if commit and judge.revision != commit:
        config = dataclasses.replace(config, fallback=dataclasses.replace(judge, revision=commit))
    return config, {**identity, "template": judge.template, "mode": judge.mode}


def _long_form_counts(file: fsio.InputFile, column: str, batch_rows: int) -> fsio.InputFile:
    """The file's row counts after exploding its list `column`, and each row group's sub-units: runs of
    whole raw batches holding at most UNIT_ROWS exploded rows (one batch at least). Reads that column once,
    on the driver."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import fsspec

    with fsspec.open(file.url, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        rows, parts = [], []
        for group in range(parquet.num_row_groups):
            lists = parquet.read_row_group(group, columns=[column]).column(column)
            lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
            per_batch = [int(lengths[i:i + batch_rows].sum()) for i in range(0, len(lengths), batch_rows)]
            rows.append(sum(per_batch))
            parts.append(_sub_units(per_batch, batch_rows, len(lengths)))
    starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(rows)[:-1]])) if rows else ()
    return dataclasses.replace(file, num_rows=sum(rows), row_group_rows=tuple(rows), row_group_starts=starts,
                               row_group_parts=tuple(parts))


def _sub_units(per_batch: list[int], batch_rows: int, raw_rows: int) -> tuple[tuple[int, int, int], ...]:
    """(raw rows before, raw rows, exploded rows) of each sub-unit: whole batches up to UNIT_ROWS rows."""
    parts, first, exploded = [], 0, 0
    for index, rows in enumerate(per_batch):
        if index > first and exploded + rows > unit_module.UNIT_ROWS:
            parts.append((first * batch_rows, (index - first) * batch_rows, exploded))
            first, exploded = index, 0
        exploded += rows
    if per_batch:
        parts.append((first * batch_rows, raw_rows - first * batch_rows, exploded))
    return tuple(parts)
