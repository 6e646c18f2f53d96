"""Several reward signals in one run: their names, how they are written, and one RewardModelConfig each.

A signal is a model (`NAME=PATH`: a local directory or hub id) or scores already in the input
(`NAME=column:COL`). On the command line `--rm-model a=PATH,b=column:COL` (and `--rm-score-column
a=COL,...`) name them, comma-separated; in YAML `rm_models: {a: {path: ..., backend: vllm, dtype: ...}}`
also takes per-model backend options. The shared --rm-* options apply to every model signal unless its YAML
entry sets its own. Each signal gets the columns rm_score__NAME and rm_status__NAME; the contract columns
rm_score and rm_status hold the one the fusion uses (--fusion-rm, default the first). One signal is a run
as before: no extra columns, nothing extra stored.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pyarrow as pa

from transforms.rm import RewardModelConfig

SIGNAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# NAME=VALUE, NAME holding no path separator, ':' or ',' (a path such as runs/lr=1e-5 is not a name).
_NAMED = re.compile(r"\s*([^/\\:,=]+?)\s*=(.*)", re.S)
COLUMN_PREFIX = "column:"
SCORE_PREFIX, STATUS_PREFIX = "rm_score__", "rm_status__"
# Keys of an rm_models entry besides RewardModelConfig's own fields (dtype, max_length, revision, ...).
_ENTRY_KEYS = {"path": "model", "column": "score_column"}
# Summed over the vLLM signals that share one GPU worker; vLLM preallocates its share of the device.
VLLM_SHARED_MEMORY_LIMIT = 0.95


@dataclass(frozen=True)
class RewardSignal:
    """One named reward signal and its own reward-model settings."""

    name: str
    config: RewardModelConfig

    @property
    def score_column(self) -> str:
        return SCORE_PREFIX + self.name

    @property
    def status_column(self) -> str:
        return STATUS_PREFIX + self.name

    @property
    def runs_model(self) -> bool:
        return self.config.backend != "precomputed"


@dataclass(frozen=True)
class SignalSet:
    """What the score stage of a run with several signals is built from: the signals, the one whose scores
    the fusion uses (rm_score), and how many models a worker keeps on its device (None: as many as fit)."""

    signals: tuple[RewardSignal, ...]
    fusion: str
    max_resident: int | None = None


def names_signals(text) -> bool:
    """Whether an --rm-model / --rm-score-column value names its signals (`NAME=...`) rather than being a
    single path or column. A path is read as a name only when it starts with `WORD=` (write `./lr=1e-5`
    for such a directory)."""
    return isinstance(text, str) and bool(_NAMED.match(text))


def _named_items(text: str, option: str) -> list[tuple[str, str]]:
    items = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _NAMED.match(part)
        if not match or not match.group(2).strip():
            raise ValueError(f"{option}: every entry of a list of reward signals is NAME=VALUE, got {part.strip()!r}")
        items.append((match.group(1), match.group(2).strip()))
    return items


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or not SIGNAL_NAME.fullmatch(name):
        raise ValueError(f"{where}: a reward signal's name is a letter or '_' then letters, digits or '_' "
                         f"(at most 64), got {name!r}")
    return name


def build_signals(shared: dict, models: dict | None = None) -> tuple[RewardSignal, ...]:
    """The run's reward signals from the rm section's options (`shared`: model, score_column, backend and
    the other RewardModelConfig fields as given) and the YAML mapping `models` (rm_models). Empty when the
    run has one unnamed reward model (the usual case). Raises ValueError naming the option and the signal."""
    model_text, column_text = shared.get("model"), shared.get("score_column")
    named_model, named_column = names_signals(model_text), names_signals(column_text)
    if not models and not named_model and not named_column:
        return ()
    entries: list[tuple[str, dict, str]] = []  # (name, settings, where it was given)
    for name, entry in (models or {}).items():
        where = f"rm_models.{name}"
        _check_name(name, where)
        if isinstance(entry, str):
            entry = {"column": entry[len(COLUMN_PREFIX):]} if entry.startswith(COLUMN_PREFIX) else {"path": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a path, 'column:COL' or a mapping of settings, got {entry!r}")
        settings = {}
        known = {f.name for f in dataclasses.fields(RewardModelConfig)} - {"cache_dir", "model", "score_column"}
        for key, value in entry.items():
            attribute = _ENTRY_KEYS.get(key, key)
            if attribute not in known and key not in _ENTRY_KEYS:
                raise ValueError(f"{where}.{key} is not a reward-model setting (path, column, "
                                 f"{', '.join(sorted(known))})")
            settings[attribute] = value
        if ("model" in settings) == ("score_column" in settings):
            raise ValueError(f"{where} needs exactly one of path (a model) and column (precomputed scores)")
        entries.append((name, settings, where))
    for text, named, option, kind in ((model_text, named_model, "--rm-model", "model"),
                                      (column_text, named_column, "--rm-score-column", "score_column")):
        if text is None:
            continue
        if not named:
            raise ValueError(f"{option} {text!r} has no name, beside named reward signals: name every one "
                             f"(NAME=...)")
        for name, value in _named_items(text, option):
            _check_name(name, option)
            if kind == "model" and value.startswith(COLUMN_PREFIX):
                entries.append((name, {"score_column": value[len(COLUMN_PREFIX):]}, option))
            else:
                entries.append((name, {kind: value}, option))
    seen: dict[str, str] = {}
    for name, _, where in entries:
        if name in seen:
            raise ValueError(f"reward signal {name!r} is named twice ({seen[name]} and {where})")
        seen[name] = where
    common = {k: v for k, v in shared.items() if k not in ("model", "score_column", "backend")}
    backend = shared.get("backend")
    if backend in ("precomputed", "none"):
        raise ValueError(f"--rm-backend {backend} names no model; named reward signals take models (NAME=PATH) "
                         f"and columns (NAME=column:COL)")
    signals = []
    for name, settings, where in entries:
        try:
            if "score_column" in settings:
                extra = sorted(set(settings) - {"score_column", "backend"})
                if extra or settings.get("backend", "precomputed") != "precomputed":
                    raise ValueError(f"a precomputed column takes no model settings ({', '.join(extra or ['backend'])})")
                config = RewardModelConfig(backend="precomputed", score_column=settings["score_column"])
            else:
                config = RewardModelConfig(**{"backend": backend or "transformers", **common, **settings})
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if where.startswith("rm_models."):  # a setting of its YAML entry: named there, not as a flag
                message = re.sub(r"\brm\.(\w+)", lambda m: f"{where}.{m.group(1)}", message)
            raise ValueError(f"reward signal {name!r} ({where}): {message}") from None
        signals.append(RewardSignal(name, config))
    vllm = [s for s in signals if s.config.backend == "vllm"]
    if len(vllm) > 1 and sum(s.config.gpu_memory_utilization for s in vllm) > VLLM_SHARED_MEMORY_LIMIT:
        shares = " + ".join(f"{s.name} {s.config.gpu_memory_utilization}" for s in vllm)
        raise ValueError(f"the vllm reward signals share a GPU worker and preallocate their fraction of it: {shares} "
                         f"exceeds {VLLM_SHARED_MEMORY_LIMIT}; give each its share "
                         f"(rm_models.{vllm[0].name}.gpu_memory_utilization: "
                         f"{round(VLLM_SHARED_MEMORY_LIMIT / len(vllm), 2)})")
    return tuple(signals)


def settle_signals(signals: tuple[RewardSignal, ...], fusion_rm: str | None, max_resident: int | None
                   ) -> tuple[tuple[RewardSignal, ...], RewardModelConfig | None]:
    """Checks a config's signals with --fusion-rm and --rm-max-resident; returns the signals to keep (none
    for a single named one: a run with one reward model, today's columns exactly) and the config that
    rm_score comes from (None: keep the config's own rm). Raises ValueError naming pipeline.* fields."""
    if len(signals) == 1:
        if fusion_rm not in (None, signals[0].name):
            raise ValueError(f"pipeline.fusion_rm {fusion_rm!r} is not a reward signal of this run ({signals[0].name})")
        if max_resident is not None:
            raise ValueError("pipeline.rm_max_resident applies when --rm-model names several models")
        return (), signals[0].config
    if max_resident is not None and not (isinstance(max_resident, int) and not isinstance(max_resident, bool)
                                         and max_resident >= 1):
        raise ValueError(f"pipeline.rm_max_resident must be an integer >= 1, got {max_resident!r}")
    if not signals:
        if fusion_rm is not None:
            raise ValueError("pipeline.fusion_rm chooses among several reward signals (--rm-model a=PATH,b=PATH); "
                             "this run has one")
        if max_resident is not None:
            raise ValueError("pipeline.rm_max_resident applies when --rm-model names several models")
        return (), None
    names = [s.name for s in signals]
    if len(set(names)) != len(names):
        raise ValueError(f"pipeline.rm_signals: names must be unique, got {names}")
    chosen = fusion_rm or names[0]
    if chosen not in names:
        raise ValueError(f"pipeline.fusion_rm must be one of the reward signals {names}, got {fusion_rm!r}")
    models = [s for s in signals if s.runs_model]
    if max_resident is not None and max_resident < len(models) and any(s.config.backend == "vllm" for s in models):
        raise ValueError(f"pipeline.rm_max_resident {max_resident} would move models off the device, which a vllm "
                         "engine cannot do; keep every vllm signal resident (unset it) or use the transformers backend")
    return signals, signals[names.index(chosen)].config


def signal_fields(signals: tuple[RewardSignal, ...]) -> list[pa.Field]:
    """The per-signal columns, in signal order (none for a run with one reward model)."""
    fields = []
    for signal in signals:
        fields += [pa.field(signal.score_column, pa.float32()), pa.field(signal.status_column, pa.string())]
    return fields
