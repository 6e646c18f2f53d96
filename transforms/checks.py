"""What the frozen config dataclasses share: value checks (each names its own field in the message), and
`option()`, which declares a field as a user-facing option and its place in the stored settings."""

from __future__ import annotations

import dataclasses
import math


def is_whole(value, minimum: int) -> bool:
    """An int (bools excluded, though Python counts them as ints) that is >= minimum."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_finite_number(value) -> bool:
    """An int or float (bools excluded) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Whether a config field is stored in every output shard's settings (PipelineConfig.labeling_dict): the rule
# for every option. NEVER: where or how fast, never what (execution only). ALWAYS: the settings stored since
# the first release, kept so that their outputs keep their bytes. AT_NON_DEFAULT (what every option added
# since takes): stored only when it differs from its default, so adding an option changes no existing output.
STORED = "stored"
ALWAYS, AT_NON_DEFAULT, NEVER = "always", "non_default", "never"
OPTION = "option"


def option(help: str, *, group: str, name: str | None = None, type: type | None = None, choices=None,
           default_text: str | None = None, stored: str = AT_NON_DEFAULT, **field_arguments):
    """A config field that is also a user-facing option, declared once, on the component that owns it:
    `--NAME` on the command line (default: the field's name; `NAME:` in YAML), its help, choices and group;
    the type comes from the field's annotation unless given; `default_text` replaces the shown default where
    it is not a constant. `stored` is the field's place in the stored-settings rule above."""
    if stored not in (ALWAYS, AT_NON_DEFAULT, NEVER):
        raise ValueError(f"stored must be one of {(ALWAYS, AT_NON_DEFAULT, NEVER)}, got {stored!r}")
    spec = {"help": help, "group": group, "name": name, "type": type, "choices": choices, "default_text": default_text}
    return dataclasses.field(metadata={OPTION: spec, STORED: stored}, **field_arguments)


def field_default(spec: dataclasses.Field):
    """The value a dataclass field takes when it is not given."""
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()


def stored_settings(config) -> dict:
    """A config section as shards store it, by the rule above (fields without a `stored` mark: not stored)."""
    values = dataclasses.asdict(config)
    kept = {}
    for spec in dataclasses.fields(config):
        stored = spec.metadata.get(STORED, NEVER)
        if stored == NEVER:
            continue
        if stored == ALWAYS or values[spec.name] != field_default(spec):
            kept[spec.name] = values[spec.name]
    return kept
