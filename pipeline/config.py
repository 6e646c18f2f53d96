"""The run's configuration: one frozen object, validated at construction, built from flat options.

Flat option names are shared by the command line (--rm-model) and YAML files (rm_model); every
validation message names the option the user typed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from transforms.checks import is_whole
from transforms.hero import HeroConfig
from transforms.reward_models import RewardModelConfig
from transforms.verifier import VerifierConfig

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
    shuffle: "files" spills labelled rows to Parquet under OUTPUT/_shuffle and groups file references
    (flat memory on the local runner); "engine" sends the Arrow batches through the runner's own shuffle
    (the better choice on Dataflow/Flink/Spark, whose shuffle spills to disk itself).
    beam_args: flags passed to Beam unchanged (--runner, --project, --temp_location, ...).
    """

    input: str
    output: str
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    hero: HeroConfig = field(default_factory=HeroConfig)
    batch_rows: int = 1024
    rows_per_shard: int = 50_000
    shuffle: str = "files"
    overwrite: bool = False
    progress: str = "auto"
    beam_args: tuple[str, ...] = ()

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

    def to_dict(self) -> dict:
        """JSON-ready form, stored in every output file's metadata and in the manifest."""
        return dataclasses.asdict(self)


# Flat option name -> (section, field). The CLI flag is "--" + name with "_" -> "-".
OPTIONS: dict[str, tuple[str, str]] = {
    "input": ("pipeline", "input"),
    "output": ("pipeline", "output"),
    "batch_rows": ("pipeline", "batch_rows"),
    "rows_per_shard": ("pipeline", "rows_per_shard"),
    "shuffle": ("pipeline", "shuffle"),
    "overwrite": ("pipeline", "overwrite"),
    "progress": ("pipeline", "progress"),
    "verifier_workers": ("verifier", "num_workers"),
    "verifier_timeout": ("verifier", "timeout_s"),
    "verifier_hard_timeout": ("verifier", "hard_timeout_s"),
    "verifier_task_size": ("verifier", "task_size"),
    "rm_backend": ("rm", "backend"),
    "rm_model": ("rm", "model"),
    "rm_revision": ("rm", "revision"),
    "rm_score_column": ("rm", "score_column"),
    "rm_max_length": ("rm", "max_length"),
    "rm_max_tokens_per_batch": ("rm", "max_tokens_per_batch"),
    "rm_max_batch_size": ("rm", "max_batch_size"),
    "rm_device": ("rm", "device"),
    "rm_dtype": ("rm", "dtype"),
    "rm_truncation_side": ("rm", "truncation_side"),
    "alpha": ("hero", "alpha"),
    "beta": ("hero", "beta"),
    "eps": ("hero", "eps"),
    "w_min": ("hero", "w_min"),
    "w_max": ("hero", "w_max"),
    "k": ("hero", "k"),
    "sigma_bar": ("hero", "sigma_bar"),
    "tie_placement": ("hero", "tie_placement"),
    "advantage_mode": ("hero", "advantage_mode"),
    "on_bad_reference": ("hero", "on_bad_reference"),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def name_options(message: str) -> str:
    """Rewrites 'rm.model' style field names in a validation message as the user's option names."""
    for name, (section, attribute) in OPTIONS.items():
        message = re.sub(rf"\b{section}\.{attribute}\b", flag(name), message)
    return message


def build_config(options: dict, beam_args: tuple[str, ...] = ()) -> PipelineConfig:
    """Builds and validates a PipelineConfig from flat options (None = default).

    rm_backend left unset is inferred: rm_model -> transformers, rm_score_column -> precomputed.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(flag(u) for u in unknown)}")
    sections: dict[str, dict] = {"pipeline": {}, "verifier": {}, "rm": {}, "hero": {}}
    for name, value in options.items():
        if value is not None:
            section, attribute = OPTIONS[name]
            sections[section][attribute] = value
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
            beam_args=tuple(beam_args),
            **sections["pipeline"],
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(name_options(str(exc))) from exc
