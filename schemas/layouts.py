"""Producer layouts: other tools' rollout files mapped onto the project's columns, before the contract's
missing-column check, in both engines (pipeline/plan.py applies them to every batch it reads).

Presets (`--preset`, comma-separated to compose; `--column-map SRC=DST,...` for anything else):
- verl: verl's generation output: its RL parquet (prompt as chat messages, reward_model.ground_truth,
  data_source, extra_info) plus `responses`, the list of generated responses per row. prompt_id is
  extra_info.index when present, else a hash of the prompt.
- trl: TRL-style prompt / completion / solution.
- openrlhf: OpenRLHF's keys, input / output / label by default (its --input_key / --output_key /
  --label_key); other keys through --column-map.
- wide: a list of responses per prompt (vLLM n > 1, open-r1 `generations`): `responses`, `generations`,
  `completions` or `outputs`, exploded into one row per response, sample_index = position in the list.
Without --preset, a layout is detected when the input lacks the project's columns and exactly one preset
fits; when several fit, or none, the error lists the columns seen and the presets that could fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import PROMPT, PROMPT_ID, REFERENCE, RESPONSE, SAMPLE_INDEX

LIST_COLUMNS = ("responses", "generations", "completions", "outputs")


class LayoutError(ValueError):
    """The input's columns fit no layout, or fit several (the message lists both)."""


@dataclass(frozen=True)
class Layout:
    """Renames (SRC -> DST, a dotted SRC reads a struct field) and an optional list column exploded into
    `response` rows. A missing prompt_id is left to the contract, which derives it from the prompt."""

    name: str
    renames: tuple[tuple[str, str], ...] = ()
    explode: str | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)  # columns (dotted for struct fields) that identify it

    def fits(self, schema: pa.Schema) -> bool:
        return all(_has(schema, name) for name in self.needs)

    def apply(self, table: pa.Table) -> pa.Table:
        """The table in the project's columns (wide rows exploded: one row per response)."""
        columns = {name: table.column(name) for name in table.column_names}
        for source, target in self.renames:
            if _has(table.schema, source):
                value = _get(table, source)
                if "." not in source:  # a renamed column moves; a struct keeps the fields not read out
                    columns.pop(source, None)
                columns[target] = value
        if self.explode and self.explode in columns:
            lists = columns.pop(self.explode)
            lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
            lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
            origin = np.repeat(np.arange(table.num_rows), lengths)
            flat = pc.list_flatten(lists)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.array([], int)
            positions = np.arange(len(origin)) - np.repeat(starts, lengths)
            columns = {name: pc.take(value, pa.array(origin)) for name, value in columns.items()}
            columns[RESPONSE] = flat
            columns[SAMPLE_INDEX] = pa.array(positions, pa.int64())
        return pa.table(columns)


def _has(schema: pa.Schema, dotted: str) -> bool:
    head, *rest = dotted.split(".")
    if head not in schema.names:
        return False
    kind = schema.field(head).type
    for part in rest:
        if not pa.types.is_struct(kind) or kind.get_field_index(part) < 0:
            return False
        kind = kind.field(part).type
    return True


def _get(table: pa.Table, dotted: str):
    head, *rest = dotted.split(".")
    value = table.column(head)
    for part in rest:
        value = pc.struct_field(value, part)
    return value


PRESETS = {
    "verl": Layout("verl", renames=(("reward_model.ground_truth", REFERENCE), ("extra_info.index", PROMPT_ID)),
                   explode="responses", needs=("prompt", "reward_model.ground_truth", "responses")),
    "trl": Layout("trl", renames=(("completion", RESPONSE), ("solution", REFERENCE)),
                  needs=("prompt", "completion", "solution")),
    "openrlhf": Layout("openrlhf", renames=(("input", PROMPT), ("output", RESPONSE), ("label", REFERENCE)),
                       needs=("input", "output", "label")),
}
PRESETS.update({f"wide:{name}" if name != "responses" else "wide": Layout(
    "wide", explode=name, needs=(PROMPT, name)) for name in LIST_COLUMNS})


def parse_column_map(spec: str) -> tuple[tuple[str, str], ...]:
    """"question=prompt,answer=reference" -> (("question", "prompt"), ("answer", "reference"))."""
    pairs = []
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"column_map entries look like SOURCE=TARGET, got {item!r}")
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)


def choose_layout(schema: pa.Schema, presets: str = "", column_map: str = "") -> Layout | None:
    """The layout for files of `schema`: the named presets composed with the column map, a detected
    preset when the project's own columns are missing, or None (the input is already in long form)."""
    renames = parse_column_map(column_map)
    names = [p.strip() for p in (presets or "").split(",") if p.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise LayoutError(f"unknown preset(s) {unknown}; presets: {', '.join(sorted(PRESETS))}")
    mapped = {target for _, target in renames}
    own = {PROMPT, RESPONSE, REFERENCE} <= (set(schema.names) | mapped)
    if not names and not own:
        fitting = [name for name, layout in PRESETS.items() if layout.fits(schema)]
        if "verl" in fitting:  # verl's preset explodes its responses itself
            fitting = [name for name in fitting if not name.startswith("wide")]
        if len(fitting) == 1:
            names = fitting
        elif len(fitting) > 1:
            raise LayoutError(f"the input's columns ({', '.join(schema.names)}) fit several presets: "
                              f"{', '.join(fitting)}; choose one with --preset")
        # Fitting none, the input goes to the contract as it is: its error names the missing column and the
        # file, and plan.py adds the columns seen and the presets (missing_columns_hint).
    if not names and not renames:
        return None
    layouts = [PRESETS[n] for n in names]
    explode = next((layout.explode for layout in layouts if layout.explode), None)
    all_renames = tuple(r for layout in layouts for r in layout.renames) + renames
    return Layout("+".join(names + (["column-map"] if renames else [])), renames=all_renames, explode=explode)


def missing_columns_hint(schema: pa.Schema) -> str:
    """What to say when the input lacks the project's columns: the columns seen and what each preset needs."""
    needs = "; ".join(f"{name} needs {', '.join(layout.needs)}" for name, layout in sorted(PRESETS.items()))
    return (f"columns seen: {', '.join(schema.names)}; no preset fits ({needs}); map columns with "
            "--column-map SRC=DST,... or choose a --preset")
