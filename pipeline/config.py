"""The run's configuration: one frozen object, validated at construction, built from flat options.

Every option is declared once, in OPTIONS below: its flat name (YAML key `rm_model`, flag `--rm-model`),
the config field it sets, its type, choices and help. The command line, YAML files and the README's
option table are all generated from that list (`python -m pipeline.config` prints the table; a test
checks the README holds exactly it). Defaults live only on the dataclasses. Every validation message
names the option the user typed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import pyarrow as pa

from schemas.layouts import choose_layout
from transforms.checks import is_finite_number, is_whole
from transforms.pairs import STRATEGIES, PairsConfig
from transforms.fuse import FUSIONS
from transforms.fuse.hero import ADVANTAGE_MODES, BAD_REFERENCE_POLICIES, TIE_PLACEMENTS, HeroConfig
from transforms.rm import DTYPES, TRUNCATION_SIDES, RewardModelConfig
from transforms.verify import VerifierConfig, sources_help

SHUFFLE_MODES = ("files", "engine")
PROGRESS_MODES = ("auto", "on", "off")
# Engine name -> the module that runs a plan on it (pipeline/engines/; imported only when chosen).
ENGINES = {"beam": "pipeline.engines.beam", "dask": "pipeline.engines.dask"}
DEFAULT_ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"


class ConfigError(ValueError):
    """An invalid option; raised before any data moves."""


# Field metadata keys of the stored-settings rule (PipelineConfig.labeling_dict).
EXECUTION_ONLY = "execution_only"
OMIT_AT_DEFAULT = "omit_at_default"


def _at_default(config, spec: dataclasses.Field) -> bool:
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    return getattr(config, spec.name) == default


def stored_settings(config) -> dict:
    """A config section as shards store it: every field but the execution-only ones, and those marked
    OMIT_AT_DEFAULT only when they differ from their default."""
    values = dataclasses.asdict(config)
    return {spec.name: values[spec.name] for spec in dataclasses.fields(config)
            if not spec.metadata.get(EXECUTION_ONLY) and not (spec.metadata.get(OMIT_AT_DEFAULT) and _at_default(config, spec))}


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the stages run; nothing here changes a label.

    engine: "beam" (default; local FnApiRunner or any Beam runner via --runner) or "dask".
    verify_ahead: batches verified ahead of the reward model inside a worker, so the scorer does not
    wait for verification (0 turns the overlap off; memory grows by this many batches).
    dask_scheduler: address of a running Dask scheduler; unset starts a LocalCluster on this machine.
    dask_workers: CPU worker processes of that LocalCluster, 2 threads each; each worker's verifier pool
    takes its share of the machine's cores, so the default (1) already uses every core. One more worker
    holds the accelerator resource when the reward model needs one.
    dask_resource: worker resource the RM tasks require, "NAME=AMOUNT"; workers started with
    `--resources NAME=AMOUNT` receive them.
    rm_accelerator: Beam accelerator resource hint put on the RM step on remote runners ("none": no hint).
    """

    engine: str = "beam"
    verify_ahead: int = 2
    dask_scheduler: str | None = None
    dask_workers: int = 1
    dask_resource: str = "GPU=1"
    rm_accelerator: str = DEFAULT_ACCELERATOR

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine.engine must be one of {tuple(ENGINES)}, got {self.engine!r}")
        if not is_whole(self.verify_ahead, 0):
            raise ValueError(f"engine.verify_ahead must be an integer >= 0, got {self.verify_ahead!r}")
        if not is_whole(self.dask_workers, 1):
            raise ValueError(f"engine.dask_workers must be an integer >= 1, got {self.dask_workers!r}")
        if self.dask_scheduler is not None and self.engine != "dask":
            raise ValueError("engine.dask_scheduler needs engine.engine=dask")
        self.resource_requirement()  # validates dask_resource
        if self.rm_accelerator != "none" and "type:" not in self.rm_accelerator:
            raise ValueError(f"engine.rm_accelerator must look like 'type:nvidia-l4;count:1;install-nvidia-driver' "
                             f"or be 'none', got {self.rm_accelerator!r}")

    def resource_requirement(self) -> dict[str, float]:
        """dask_resource as Dask's resources mapping, e.g. {"GPU": 1.0}."""
        match = re.fullmatch(r"\s*([A-Za-z_][\w.-]*)\s*=\s*([0-9]*\.?[0-9]+)\s*", str(self.dask_resource))
        if not match or float(match.group(2)) <= 0:
            raise ValueError(f"engine.dask_resource must look like NAME=AMOUNT with AMOUNT > 0 (e.g. GPU=1), "
                             f"got {self.dask_resource!r}")
        return {match.group(1): float(match.group(2))}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs.

    batch_rows: rows per Arrow batch flowing through verify and score (memory ~ batch_rows x row size).
    rows_per_shard: target rows per output shard; the number of shards (and of group buckets) is
    ceil(input rows / rows_per_shard), so memory in the group stage stays flat as inputs grow.
    shuffle: "files" spills labelled rows to Parquet under OUTPUT/_shuffle and groups file references
    (flat memory on every engine); "engine" sends the Arrow batches through Beam's own shuffle (the
    better choice on Dataflow/Flink/Spark, whose shuffle spills to disk itself; Dask always spills).
    max_error_rate: the run fails (manifest status "failed", non-zero exit, everything still written)
    when more than this fraction of input rows went to errors/ or came out with verifier status timeout,
    error or bad_reference or RM status error. no_reference is a choice of the data, not an error.
    beam_args: flags passed to Beam unchanged (--runner, --project, --temp_location, ...).
    fusion: how verdicts and RM scores become one reward per rollout (transforms/fuse/: FUSIONS).

    Stored settings: `labeling_dict()` is what every shard records. The rule for every option: a field
    with metadata EXECUTION_ONLY (where or how fast, never what) is not stored; a field with metadata
    OMIT_AT_DEFAULT is stored only when it differs from its default, so that adding an option changes
    no existing output's bytes. Every labeling option added from now on carries OMIT_AT_DEFAULT
    (tests/test_contracts.py checks the stored settings at their defaults stay exactly today's).
    """

    input: str
    output: str
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    hero: HeroConfig = field(default_factory=HeroConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    batch_rows: int = 4096
    rows_per_shard: int = 50_000
    shuffle: str = "files"
    overwrite: bool = False
    progress: str = "auto"
    max_error_rate: float = 0.01
    preset: str = ""
    column_map: str = ""
    beam_args: tuple[str, ...] = ()
    fusion: str = field(default="hero", metadata={OMIT_AT_DEFAULT: True})

    def __post_init__(self):
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"pipeline.{name} is required")
        for name in ("batch_rows", "rows_per_shard"):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise ValueError(f"pipeline.{name} must be an integer >= 1, got {value!r}")
        if self.shuffle not in SHUFFLE_MODES:
            raise ValueError(f"pipeline.shuffle must be one of {SHUFFLE_MODES}, got {self.shuffle!r}")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"pipeline.progress must be one of {PROGRESS_MODES}, got {self.progress!r}")
        if not (is_finite_number(self.max_error_rate) and 0 <= self.max_error_rate <= 1):
            raise ValueError(f"pipeline.max_error_rate must be a number in [0, 1], got {self.max_error_rate!r}")
        if isinstance(self.column_map, dict):  # YAML mapping form
            object.__setattr__(self, "column_map", ",".join(f"{k}={v}" for k, v in self.column_map.items()))
        try:
            choose_layout(pa.schema([(c, pa.string()) for c in ("prompt", "response", "reference")]), self.preset,
                          self.column_map)
        except ValueError as exc:
            raise ValueError(f"pipeline.{'column_map' if 'column_map' in str(exc) else 'preset'}: {exc}") from None
        if self.verifier.num_workers == 0:
            raise ValueError("verifier.num_workers must be >= 1 in a pipeline run (0 runs math-verify in the calling "
                             "thread, whose signal-based timeouts only work in a main thread; engines verify in "
                             "worker threads)")
        if self.fusion not in FUSIONS:
            raise ValueError(f"pipeline.fusion must be one of {tuple(FUSIONS)}, got {self.fusion!r}")
        if self.beam_args and self.engine.engine != "beam":
            raise ValueError(f"options not known to herolabel go to Apache Beam, which engine.engine="
                             f"{self.engine.engine} does not use: {' '.join(self.beam_args)}")

    def to_dict(self) -> dict:
        """JSON-ready form of every setting, stored in the manifest."""
        return dataclasses.asdict(self)

    def labeling_dict(self) -> dict:
        """The settings that decide the labels (stored in every shard); no paths or execution settings."""
        verifier = stored_settings(self.verifier)
        for execution_only in ("num_workers", "task_size"):
            verifier.pop(execution_only)
        rm = stored_settings(self.rm)
        rm.pop("cache_dir")  # where scores are remembered, not what they are
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get(OMIT_AT_DEFAULT)
               and not _at_default(self, f)}
        return {"verifier": verifier, "rm": rm, "hero": stored_settings(self.hero), **top}


_SECTIONS = {"pipeline": PipelineConfig, "verifier": VerifierConfig, "rm": RewardModelConfig, "hero": HeroConfig,
             "engine": EngineConfig, "pairs": PairsConfig}


@dataclass(frozen=True)
class Option:
    """One user-facing option. default_text overrides the shown default where it is not a constant."""

    name: str
    section: str
    attribute: str
    help: str
    type: type = str
    choices: tuple | None = None
    default_text: str | None = None
    group: str = "input and output"

    @property
    def flag(self) -> str:
        return flag(self.name)

    def default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        spec = {f.name: f for f in dataclasses.fields(_SECTIONS[self.section])}[self.attribute]
        value = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        return "–" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


_IO, _RM, _VER, _HERO, _ENG = "input and output", "reward model", "verifier", "HERO fusion", "engine and placement"
_PAIRS = "DPO pairs"
OPTIONS: tuple[Option, ...] = (
    Option("input", "pipeline", "input", "Parquet file, directory (searched recursively) or glob; local or fsspec URL",
           default_text="required"),
    Option("output", "pipeline", "output", "directory to write: data/, errors/, manifest.json", default_text="required"),
    Option("preset", "pipeline", "preset", "input layout of another tool, comma-separated to compose: `verl` "
           "(generation output, `responses` list), `trl` (prompt/completion/solution), `openrlhf` "
           "(input/output/label), `wide` (a list of responses per row, exploded); detected when unambiguous"),
    Option("column_map", "pipeline", "column_map", "renames applied to the input, `SRC=DST,...` (a dotted SRC reads a "
           "struct field: `reward_model.ground_truth=reference`)"),
    Option("overwrite", "pipeline", "overwrite", "replace a previous run in --output", type=bool),
    Option("batch_rows", "pipeline", "batch_rows", "rows per Arrow batch through verify and score", type=int),
    Option("rows_per_shard", "pipeline", "rows_per_shard", "target rows per output shard; shards = ⌈rows / this⌉",
           type=int),
    Option("shuffle", "pipeline", "shuffle", "`files`: group via spill files under OUTPUT/_shuffle (flat memory); "
           "`engine`: Beam's own shuffle (use on Dataflow/Flink/Spark)", choices=SHUFFLE_MODES),
    Option("progress", "pipeline", "progress", "live counters on stderr (`auto`: when stderr is a terminal)",
           choices=PROGRESS_MODES),
    Option("max_error_rate", "pipeline", "max_error_rate", "error budget: the run fails (manifest `failed`, exit 1, "
           "everything written) when more than this fraction of input rows went to errors/ or has verifier status "
           "`timeout`/`error`/`bad_reference` or RM status `error`", type=float),
    Option("rm_backend", "rm", "backend", "reward-model backend: `transformers` or `vllm` with --rm-model, "
           "`precomputed` with --rm-score-column, `none`: verifier only, or one registered in transforms/rm/",
           default_text="inferred", group=_RM),
    Option("rm_model", "rm", "model", "sequence-classification RM with one output: local path or hub id", group=_RM),
    Option("rm_revision", "rm", "revision", "hub revision (commit, tag or branch) to pin", group=_RM),
    Option("rm_score_column", "rm", "score_column", "input column holding precomputed scores", group=_RM),
    Option("rm_max_length", "rm", "max_length", "tokens per rollout; longer ones are truncated "
           "(`rm_status = truncated`)", type=int, group=_RM),
    Option("rm_truncation_side", "rm", "truncation_side", "`left` keeps the end of the response, where the RM reads "
           "its score", choices=TRUNCATION_SIDES, group=_RM),
    Option("rm_max_tokens_per_batch", "rm", "max_tokens_per_batch", "tokens per forward pass, the RM memory knob "
           "(real tokens when packed, rows × longest when padded)", type=int, group=_RM),
    Option("rm_max_batch_size", "rm", "max_batch_size", "rollouts per forward pass", type=int, group=_RM),
    Option("rm_device", "rm", "device", "`auto`: one model copy per GPU the worker sees, else cpu (chosen on the "
           "worker); `cpu`, `cuda`, or a list such as `cuda:0,cuda:1`", group=_RM),
    Option("rm_dtype", "rm", "dtype", "`auto`: bf16 on GPU, fp32 on CPU", choices=DTYPES, group=_RM),
    Option("cache_dir", "rm", "cache_dir", "score cache (local path or fsspec URL): rollouts already scored by the "
           "same RM and settings are read back instead of scored; the manifest counts both", group=_RM),
    Option("rm_tensor_parallel_size", "rm", "tensor_parallel_size", "GPUs per model copy (vllm backend)", type=int,
           group=_RM),
    Option("rm_gpu_memory_utilization", "rm", "gpu_memory_utilization", "fraction of GPU memory vLLM may take "
           "(vllm backend)", type=float, group=_RM),
    Option("verifier_workers", "verifier", "num_workers", "math-verify processes per engine worker process",
           type=int, default_text="host cores ÷ engine processes", group=_VER),
    Option("verifier_timeout", "verifier", "timeout_s", "math-verify's own timeout, whole seconds (it uses "
           "`signal.alarm`)", type=int, group=_VER),
    Option("verifier_hard_timeout", "verifier", "hard_timeout_s", "seconds per response before its verifier process "
           "is killed and replaced", type=float, group=_VER),
    Option("verifier_sources", "verifier", "sources", sources_help(), group=_VER),
    Option("verifier_task_size", "verifier", "task_size", "responses per message to a verifier process", type=int,
           group=_VER),
    Option("fusion", "pipeline", "fusion", "how verdicts and RM scores become one reward per rollout: `hero` "
           "(stratified normalization + variance-aware weighting, arXiv 2510.07242), or a fusion registered in "
           "transforms/fuse/", group=_HERO),
    Option("alpha", "hero", "alpha", "half-width of the incorrect band `[-α, α]`; α + β < 1", type=float,
           group=_HERO),
    Option("beta", "hero", "beta", "half-width of the correct band `[1-β, 1+β]`", type=float, group=_HERO),
    Option("eps", "hero", "eps", "min-max and advantage epsilon", type=float, group=_HERO),
    Option("w_min", "hero", "w_min", "lowest difficulty weight: `w = w_min + (w_max-w_min)·sigmoid(k(σ_u - σ̄))`",
           type=float, group=_HERO),
    Option("w_max", "hero", "w_max", "highest difficulty weight", type=float, group=_HERO),
    Option("k", "hero", "k", "sigmoid steepness of the difficulty weight", type=float, group=_HERO),
    Option("sigma_bar", "hero", "sigma_bar", "fixed σ̄ (stable incremental relabeling)",
           type=float, default_text="job mean of σ_u", group=_HERO),
    Option("tie_placement", "hero", "tie_placement", "where a single or all-tied verifier class lands in its band",
           choices=TIE_PLACEMENTS, group=_HERO),
    Option("advantage_mode", "hero", "advantage_mode", "`grpo`: `w·(r̂-mean)/(std+eps)`; `mean-only`: `w·(r̂-mean)`",
           choices=ADVANTAGE_MODES, group=_HERO),
    Option("on_bad_reference", "hero", "on_bad_reference", "groups without a usable reference: `null` hero columns, "
           "or `rm_only` (RM min-max into `[-α, 1+β]`)", choices=BAD_REFERENCE_POLICIES, group=_HERO),
    Option("engine", "engine", "engine", "`beam` (local FnApiRunner, or any runner via --runner) or `dask`",
           choices=tuple(ENGINES), group=_ENG),
    Option("verify_ahead", "engine", "verify_ahead", "batches verified ahead of the RM inside a worker, so the "
           "scorer never waits for the verifier; 0 turns the overlap off", type=int, group=_ENG),
    Option("dask_scheduler", "engine", "dask_scheduler", "address of a running Dask scheduler (tcp://host:8786); "
           "unset: a LocalCluster on this machine", default_text="LocalCluster", group=_ENG),
    Option("dask_workers", "engine", "dask_workers", "CPU worker processes of the LocalCluster (plus one holding "
           "the RM resource when the backend needs an accelerator)", type=int, group=_ENG),
    Option("dask_resource", "engine", "dask_resource", "worker resource every RM task requires (`NAME=AMOUNT`); "
           "start GPU workers with `--resources GPU=1`", group=_ENG),
    Option("rm_accelerator", "engine", "rm_accelerator", "Beam accelerator hint on the RM step on remote runners "
           "(`none`: no hint)", group=_ENG),
    Option("pairs", "pairs", "enabled", "write DPO preference pairs to OUTPUT/pairs/ (TRL's prompt / chosen / "
           "rejected)", type=bool, group=_PAIRS),
    Option("pairs_min_margin", "pairs", "min_margin", "smallest hero_reward gap of a pair; ties never pair",
           type=float, group=_PAIRS),
    Option("pairs_within_band", "pairs", "within_band", "also pair inside one verifier class when a prompt's "
           "responses are all correct (or all wrong)", type=bool, group=_PAIRS),
    Option("pairs_strategy", "pairs", "strategy", "`best_vs_worst`: one pair per prompt; `all`: every qualifying "
           "pair, widest margin first, up to --pairs-max-per-prompt", choices=STRATEGIES, group=_PAIRS),
    Option("pairs_max_per_prompt", "pairs", "max_per_prompt", "pairs per prompt at most (strategy `all`)", type=int,
           group=_PAIRS),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser) -> None:
    """Adds every option to an argparse parser, grouped as in the README; values default to None (unset)."""
    groups = {}
    for option in OPTIONS:
        group = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        help_text = f"{option.help} (default: {option.default()})".replace("%", "%%")
        if option.type is bool:
            group.add_argument(option.flag, action="store_true", default=None, help=help_text)
        else:
            group.add_argument(option.flag, type=option.type, choices=option.choices, help=help_text)


def options_markdown() -> str:
    """The README's option table, generated from OPTIONS."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        meaning = option.help + (f"; one of {', '.join(f'`{c}`' for c in option.choices)}" if option.choices else "")
        lines.append(f"| `{option.flag}` | {option.default()} | {meaning} |")
    return "\n".join(lines)


def name_options(message: str) -> str:
    """Rewrites 'rm.model' style field names in a validation message as the user's option names."""
    for option in OPTIONS:
        message = re.sub(rf"\b{option.section}\.{option.attribute}\b", option.flag, message)
    return message


def build_config(options: dict, beam_args: tuple[str, ...] = ()) -> PipelineConfig:
    """Builds and validates a PipelineConfig from flat options (None = default).

    rm_backend left unset is inferred: rm_model -> transformers, rm_score_column -> precomputed.
    """
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(flag(u) for u in unknown)}")
    sections: dict[str, dict] = {name: {} for name in _SECTIONS}
    for name, value in options.items():
        if value is not None:
            option = OPTIONS_BY_NAME[name]
            sections[option.section][option.attribute] = value
    rm = sections["rm"]
    if "backend" not in rm:
        if rm.get("model"):
            rm["backend"] = "transformers"
        elif rm.get("score_column"):
            rm["backend"] = "precomputed"
        else:
            raise ConfigError("choose a reward model: --rm-model PATH (transformers), --rm-score-column COL "
                              "(precomputed) or --rm-backend none (verifier only)")
    try:
        return PipelineConfig(
            verifier=VerifierConfig(**sections["verifier"]),
            rm=RewardModelConfig(**rm),
            hero=HeroConfig(**sections["hero"]),
            engine=EngineConfig(**sections["engine"]),
            pairs=PairsConfig(**sections["pairs"]),
            beam_args=tuple(beam_args),
            **sections["pipeline"],
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(name_options(str(exc))) from exc


def write_readme_table(path: str) -> None:
    """Replaces the table between the README's option markers with options_markdown()."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    pattern = r"(<!-- options:begin -->\n).*?(\n<!-- options:end -->)"
    if not re.search(pattern, text, re.S):
        raise SystemExit(f"{path} has no <!-- options:begin --> / <!-- options:end --> markers")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(re.sub(pattern, lambda m: m.group(1) + options_markdown() + m.group(2), text, flags=re.S))


if __name__ == "__main__":
    import sys

    # python -m pipeline.config            prints the table
    # python -m pipeline.config README.md  rewrites it in place
    if len(sys.argv) > 1:
        write_readme_table(sys.argv[1])
    else:
        print(options_markdown())
