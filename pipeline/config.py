"""The run's configuration: one frozen object, validated at construction, built from flat options.

Every option is declared once, on the field of the component that owns it (`option()`, transforms/checks.py:
its flat name, YAML key `rm_model`, flag `--rm-model`; its help, choices, group and default). OPTIONS below
reads them from the sections; the command line, YAML files and the README's option table are all generated
from it (`python -m pipeline.config` prints the table; a test checks the README holds exactly it). Every
validation message names the option the user typed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from schemas.layouts import choose_layout
from transforms.checks import NEVER, OPTION, field_default, is_finite_number, is_whole, option, stored_settings
from transforms.fuse import FUSIONS, Fusion, make_fusion
from transforms.fuse.ensemble import EnsembleConfig, EnsembleFusion
from transforms.fuse.gdpo import GdpoConfig
from transforms.fuse.hero import HeroConfig
from transforms.fuse.posterior import PosteriorConfig
from transforms.judge import JudgeConfig
from transforms.pairs import PairsConfig
from transforms.rm import RewardModelConfig
from transforms.rm.signals import RewardSignal, build_signals, settle_signals
from transforms.verify import VerifierConfig
from pipeline.engine_config import DEFAULT_ACCELERATOR, ENGINES, EngineConfig, parse_resource  # noqa: F401 - API

SHUFFLE_MODES = ("files", "engine")
PROGRESS_MODES = ("auto", "on", "off")
class ConfigError(ValueError):
    """An invalid option; raised before any data moves."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs.

    batch_rows: rows per Arrow batch flowing through verify and score (memory ~ batch_rows x row size).
    rows_per_shard: target rows per output shard; the number of shards (and of group buckets) is
    ceil(input rows / rows_per_shard), so memory in the group stage stays flat as inputs grow.
    min_part_rows: in a job of over 100,000 spill parts (units x shards), small row groups of a file are
    joined into units of at least min_part_rows x shards rows (up to 65,536), so the parts do not grow
    with the square of the job (pipeline/stages/unit.py); 0: a unit per row group always.
    shuffle: "files" spills labelled rows to Parquet under OUTPUT/_shuffle and groups file references
    (flat memory on every engine); "engine" sends the Arrow batches through Beam's own shuffle (the
    better choice on Dataflow/Flink/Spark, whose shuffle spills to disk itself; Dask always spills).
    max_error_rate: the run fails (manifest status "failed", non-zero exit, everything still written)
    when more than this fraction of input rows went to errors/ or came out with verifier status timeout,
    error or bad_reference or RM status error. no_reference is a choice of the data, not an error.
    beam_args: flags passed to Beam unchanged (--runner, --project, --temp_location, ...).
    fusion: how verdicts and RM scores become one reward per rollout (transforms/fuse/: FUSIONS).

    Stored settings: `labeling_dict()` is what every shard records, each field's place declared on it
    (`stored` in transforms/checks.py: never, always, or only away from its default, which every option
    added since takes, so adding one changes no existing output's bytes; tests/test_contracts.py checks
    the stored settings at their defaults stay exactly today's).
    """

    input: str = option(
        "Parquet file, directory (searched recursively) or glob; local or fsspec URL",
        group="input and output", default_text="required", stored=NEVER)
    output: str = option(
        "directory to write: data/, errors/, manifest.json",
        group="input and output", default_text="required", stored=NEVER)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    fallback: JudgeConfig = field(default_factory=JudgeConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    hero: HeroConfig = field(default_factory=HeroConfig)
    gdpo: GdpoConfig = field(default_factory=GdpoConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    batch_rows: int = option(
        "rows per Arrow batch through verify and score",
        group="input and output", default=4096, stored=NEVER)
    rows_per_shard: int = option(
        "target rows per output shard; shards = ⌈rows / this⌉",
        group="input and output", default=50_000, stored=NEVER)
    min_part_rows: int = option(
        "rows per shard a unit of work holds at least in a job of over 100,000 spill parts (units × shards): "
        "small consecutive row groups of a file are then read as one unit while it has fewer than this × "
        "shards rows (never past 65,536); 0 makes every row group a unit",
        group="input and output", default=256, stored=NEVER)
    shuffle: str = option(
        "`files`: group via spill files under OUTPUT/_shuffle (flat memory); `engine`: Beam's own shuffle (use on"
        " Dataflow/Flink/Spark)",
        group="input and output", choices=SHUFFLE_MODES, default="files", stored=NEVER)
    overwrite: bool = option(
        "replace a previous run in --output",
        group="input and output", default=False, stored=NEVER)
    progress: str = option(
        "live counters on stderr (`auto`: when stderr is a terminal)",
        group="input and output", choices=PROGRESS_MODES, default="auto", stored=NEVER)
    max_error_rate: float = option(
        "error budget: the run fails (manifest `failed`, exit 1, everything written) when more than this fraction"
        " of input rows went to errors/ or has verifier status `timeout`/`error`/`bad_reference` or RM status "
        "`error`",
        group="input and output", default=0.01, stored=NEVER)
    preset: str = option(
        "input layout of another tool, comma-separated to compose: `verl` (generation output, `responses` list), "
        "`trl` (prompt/completion/solution), `openrlhf` (input/output/label), `wide` (a list of responses per "
        "row, exploded); detected when unambiguous",
        group="input and output", default="", stored=NEVER)
    column_map: str = option(
        "renames applied to the input, `SRC=DST,...` (a dotted SRC reads a struct field: "
        "`reward_model.ground_truth=reference`)",
        group="input and output", default="", stored=NEVER)
    sigma_bar_from: str | None = option(
        "take σ̄ from an earlier run's `OUTPUT/manifest.json` (as --sigma-bar), so a nightly relabel keeps "
        "yesterday's scale",
        group="fusion", default=None, stored=NEVER)
    beam_args: tuple[str, ...] = ()
    fusion: str = option(
        "how verdicts and RM scores become one reward per rollout: `hero` (stratified normalization + "
        "variance-aware weighting, arXiv 2510.07242), `gdpo` (each reward component normalized per group, then a "
        "weighted sum), `posterior` (P(correct | verdict, RM score), calibrated on --calibration), `verifier` or "
        "`rm` (either reward alone), or a fusion registered in transforms/fuse/",
        group="fusion", default="hero")
    fusion_rm: str | None = option(
        "the reward signal the fusion uses, and `rm_score`/`rm_status` hold, when --rm-model names several",
        group="fusion", default_text="the first", default=None)
    rm_max_resident: int | None = option(
        "reward models kept on a GPU worker's device at once when --rm-model names several; the others wait in "
        "host memory and are moved in when their turn comes",
        group="reward model", default_text="as many as fit", default=None, stored=NEVER)
    # Several named reward signals (transforms/rm/signals.py), built from --rm-model / --rm-score-column /
    # rm_models; empty for a run with one reward model. `rm` then holds the fusion's signal (fusion_rm).
    rm_signals: tuple[RewardSignal, ...] = ()

    def __post_init__(self):
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"pipeline.{name} is required")
        for name in ("batch_rows", "rows_per_shard"):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise ValueError(f"pipeline.{name} must be an integer >= 1, got {value!r}")
        if not is_whole(self.min_part_rows, 0):
            raise ValueError(f"pipeline.min_part_rows must be an integer >= 0, got {self.min_part_rows!r}")
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
        self._check_signals()
        if self.sigma_bar_from is not None:  # read once: from here on it is --sigma-bar (a rebuilt config needs no file)
            object.__setattr__(self, "hero", dataclasses.replace(self.hero, sigma_bar=self._carried_sigma_bar()))
            object.__setattr__(self, "sigma_bar_from", None)
        if self.verifier.cache_dir != self.rm.cache_dir:  # one --cache-dir holds verdicts and scores
            object.__setattr__(self, "verifier", dataclasses.replace(self.verifier, cache_dir=self.rm.cache_dir))
        if self.fallback.cache_dir != self.rm.cache_dir:  # and the judge's verdicts
            object.__setattr__(self, "fallback", dataclasses.replace(self.fallback, cache_dir=self.rm.cache_dir))
        self._check_shared_gpu()
        self.make_fusion()  # a fusion checks its settings against the run's (gdpo weights, rm without scores)
        if self.beam_args and self.engine.engine != "beam":
            raise ValueError(f"options not known to herolabel go to Apache Beam, which engine.engine="
                             f"{self.engine.engine} does not use: {' '.join(self.beam_args)}")

    def _check_signals(self) -> None:
        signals, rm = settle_signals(tuple(self.rm_signals), self.fusion_rm, self.rm_max_resident)
        object.__setattr__(self, "rm_signals", signals)
        object.__setattr__(self, "rm", rm or self.rm)
        if not signals:
            object.__setattr__(self, "fusion_rm", None)

    def _check_shared_gpu(self) -> None:
        """A vLLM judge and a vLLM reward model share each GPU worker: their memory shares must fit in one."""
        if not (self.fallback.enabled and self.fallback.backend == "vllm"):
            return
        for rm in [s.config for s in self.rm_signals] or [self.rm]:
            total = rm.gpu_memory_utilization + self.fallback.gpu_memory_utilization
            if rm.backend == "vllm" and total > 1:
                raise ValueError(f"rm.gpu_memory_utilization ({rm.gpu_memory_utilization}) and "
                                 f"fallback.gpu_memory_utilization ({self.fallback.gpu_memory_utilization}) add up to "
                                 f"{total:g} of one GPU worker's memory, where both vLLM engines run; lower them so "
                                 "they add up to at most 1")

    def _carried_sigma_bar(self) -> float:
        """σ̄ recorded in the manifest --sigma-bar-from names (read before any data moves)."""
        if self.fusion != "hero":
            raise ValueError(f"pipeline.sigma_bar_from sets HERO's sigma_bar; pipeline.fusion={self.fusion} has none")
        if self.hero.sigma_bar is not None:
            raise ValueError("pipeline.sigma_bar_from and hero.sigma_bar both set sigma_bar: give one")
        try:
            with fsspec.open(self.sigma_bar_from, "r") as handle:
                value = json.load(handle).get("sigma_bar")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"pipeline.sigma_bar_from: cannot read a manifest at {self.sigma_bar_from!r}: {exc}") \
                from None
        if not is_finite_number(value):
            raise ValueError(f"pipeline.sigma_bar_from: {self.sigma_bar_from} records no sigma_bar (got {value!r}: "
                             "a run without RM scores, or not a herolabel manifest)")
        return float(value)

    def make_fusion(self) -> Fusion:
        """The run's fusion, built from the config's sections by name (hero, gdpo, ...) and its reward signals."""
        sections = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)
                    if dataclasses.is_dataclass(getattr(self, spec.name))}
        fusion = make_fusion(self.fusion, {**sections, "rm_signals": self.rm_signals},
                             rm_scores=self.rm.backend != "none")
        return EnsembleFusion(fusion, self.ensemble, self.rm_signals) if self.ensemble.enabled else fusion

    @property
    def fusion_signal(self) -> str | None:
        """The name of the signal in rm_score / rm_status (None with one reward model)."""
        return (self.fusion_rm or self.rm_signals[0].name) if self.rm_signals else None

    def to_dict(self) -> dict:
        """JSON-ready form of every setting, stored in the manifest."""
        return dataclasses.asdict(self)

    def labeling_dict(self) -> dict:
        """The settings that decide the labels (stored in every shard), by the rule every field declares
        (transforms/checks.py: `stored`); no paths or execution settings."""
        stored = {"verifier": stored_settings(self.verifier), "rm": stored_settings(self.rm),
                  "hero": stored_settings(self.hero), **stored_settings(self)}
        # A mode's own section decides the labels of the runs that use it, and no other run's.
        for name, used in (("gdpo", self.fusion == "gdpo"), ("ensemble", self.ensemble.enabled),
                           ("posterior", self.fusion == "posterior"), ("fallback", self.fallback.enabled)):
            if used:
                stored[name] = stored_settings(getattr(self, name))
        if self.rm_signals:  # several reward signals: each one's settings (one model: nothing more stored)
            stored["rm_signals"] = {s.name: stored_settings(s.config) for s in self.rm_signals}
        return stored


# Options given only as YAML mappings (no flag): rm_models, the reward signals with per-model settings.
MAPPING_OPTIONS = ("rm_models",)

# The sections whose fields are options, in the order the option table lists them.
_SECTIONS = {"pipeline": PipelineConfig, "rm": RewardModelConfig, "verifier": VerifierConfig, "fallback": JudgeConfig,
             "hero": HeroConfig, "gdpo": GdpoConfig, "ensemble": EnsembleConfig, "posterior": PosteriorConfig,
             "engine": EngineConfig, "pairs": PairsConfig}


@dataclass(frozen=True)
class Option:
    """One user-facing option, read from its field's declaration (transforms/checks.py: option())."""

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
        value = field_default(spec)
        return "–" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


_TYPES = {"bool": bool, "int": int, "float": float}


def _options() -> tuple[Option, ...]:
    """Every field declared with option(), section by section in field order."""
    found = []
    for section, cls in _SECTIONS.items():
        for spec in dataclasses.fields(cls):
            declared = spec.metadata.get(OPTION)
            if declared is None:
                continue
            annotation = spec.type if isinstance(spec.type, str) else spec.type.__name__
            kind = declared["type"] or _TYPES.get(annotation.split(" ")[0].split("|")[0], str)
            found.append(Option(declared["name"] or spec.name, section, spec.name, declared["help"], kind,
                                declared["choices"], declared["default_text"], declared["group"]))
    return tuple(found)


OPTIONS: tuple[Option, ...] = _options()
OPTIONS_BY_NAME = {known.name: known for known in OPTIONS}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser, options: tuple[Option, ...] | list[Option] = OPTIONS) -> None:
    """Adds the options (every one by default) to an argparse parser, grouped as in the README; values default
    to None (unset)."""
    groups = {}
    for known in options:
        group = groups.get(known.group) or groups.setdefault(known.group, parser.add_argument_group(known.group))
        help_text = f"{known.help} (default: {known.default()})".replace("%", "%%")
        if known.type is bool:
            group.add_argument(known.flag, action="store_true", default=None, help=help_text)
        else:
            group.add_argument(known.flag, type=known.type, choices=known.choices, help=help_text)


def options_markdown() -> str:
    """The README's option table, generated from OPTIONS."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for known in OPTIONS:
        meaning = known.help + (f"; one of {', '.join(f'`{c}`' for c in known.choices)}" if known.choices else "")
        lines.append(f"| `{known.flag}` | {known.default()} | {meaning} |")
    return "\n".join(lines)


def name_options(message: str) -> str:
    """Rewrites 'rm.model' style field names in a validation message as the user's option names."""
    for known in OPTIONS:
        message = re.sub(rf"\b{known.section}\.{known.attribute}\b", known.flag, message)
    return message


def build_config(options: dict, beam_args: tuple[str, ...] = ()) -> PipelineConfig:
    """Builds and validates a PipelineConfig from flat options (None = default).

    rm_backend left unset is inferred: rm_model -> transformers, rm_score_column -> precomputed.
    """
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME) - set(MAPPING_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(flag(u) for u in unknown)}")
    sections: dict[str, dict] = {name: {} for name in _SECTIONS}
    for name, value in options.items():
        if value is not None and name not in MAPPING_OPTIONS:
            known = OPTIONS_BY_NAME[name]
            sections[known.section][known.attribute] = value
    rm = sections["rm"]
    models = options.get("rm_models")
    if models is not None and not isinstance(models, dict):
        raise ConfigError(f"rm_models must be a mapping of signal names to settings, got {models!r}")
    try:
        signals = build_signals(rm, models)
    except ValueError as exc:
        raise ConfigError(name_options(str(exc))) from exc
    if signals:
        sections["pipeline"]["rm_signals"] = signals
        rm = {}  # the fusion's signal's own config replaces it (PipelineConfig checks fusion_rm)
    elif "backend" not in rm:
        if rm.get("model"):
            rm["backend"] = "transformers"
        elif rm.get("score_column"):
            rm["backend"] = "precomputed"
        else:
            raise ConfigError("choose a reward model: --rm-model PATH (transformers), --rm-score-column COL "
                              "(precomputed) or --rm-backend none (verifier only)")
    try:
        return PipelineConfig(
            rm=RewardModelConfig(**rm) if rm else RewardModelConfig(),
            **{name: cls(**sections[name]) for name, cls in _SECTIONS.items() if name not in ("pipeline", "rm")},
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
