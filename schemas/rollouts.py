"""The data contract: input rollout columns, the label columns every stage adds, and the error record.

Rows are "long" (one response per row). Canonical columns are typed here; every other column passes
through untouched. Validation never raises on a bad row: it splits a batch into rows that can be
labelled and error records that say why the others cannot (dead-letter pattern).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PROMPT_ID = "prompt_id"
PROMPT = "prompt"
RESPONSE = "response"
REFERENCE = "reference"
DATA_SOURCE = "data_source"
SAMPLE_INDEX = "sample_index"

# Internal column: (file index << 32) | row index. Gives every row a deterministic position so outputs
# are sorted identically whatever the engine or bundle order; dropped before writing.
ORDER = "__herolabel_order"

CHAT_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
CHAT_PROMPT = pa.list_(CHAT_MESSAGE)

VERIFIER_FIELDS = [
    pa.field("verifier_score", pa.float32()),  # 1/0; null when not judgeable (see verifier_status)
    pa.field("verifier_status", pa.string()),
    pa.field("extracted_answer", pa.string()),
    # Which rule decided the verdict (math_verify, extraction, refused:<name>, or the per-source verifier's
    # name), so a disputed verdict points at the code that made it; null unless the status is ok/no_answer.
    pa.field("verifier_rule", pa.string()),
]
# Added by the fallback judge (--fallback-verifier) only: its verdict on a row the rules rejected (FallbackVerdict),
# null where the judge was not called.
FALLBACK_FIELDS = [pa.field("fallback_verdict", pa.string())]
RM_FIELDS = [
    pa.field("rm_score", pa.float32()),  # raw reward-model score (a logit)
    pa.field("rm_status", pa.string()),
]
HERO_FIELDS = [
    pa.field("group_size", pa.int32()),
    pa.field("group_rm_std", pa.float64()),  # sigma_u, population std of rm_score in the group
    pa.field("hero_normalized", pa.float64()),  # r_hat
    pa.field("difficulty_weight", pa.float64()),  # w(sigma_u)
    pa.field("hero_reward", pa.float64()),  # w * r_hat
    pa.field("advantage", pa.float64()),
    pa.field("hero_status", pa.string()),
]
LABEL_FIELDS = VERIFIER_FIELDS + RM_FIELDS + HERO_FIELDS
LABEL_COLUMNS = [f.name for f in LABEL_FIELDS]



class _Vocabulary:
    """A closed set of status strings; stage code names members (VerifierStatus.OK), never literals."""

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(v for k, v in vars(cls).items() if k.isupper())


class VerifierStatus(_Vocabulary):
    OK = "ok"  # judged: score 1 or 0
    NO_ANSWER = "no_answer"  # nothing extractable in the response: score 0
    NO_REFERENCE = "no_reference"  # the row has no gold answer: score null
    BAD_REFERENCE = "bad_reference"  # the gold answer cannot be parsed: score null
    TIMEOUT = "timeout"  # math-verify's timeout or the hard wall-clock limit: score null
    ERROR = "error"  # math-verify raised, or its worker died: score null


class FallbackVerdict(_Vocabulary):
    CORRECT = "correct"  # the judge calls the answer equivalent to the gold
    INCORRECT = "incorrect"
    INVALID = "invalid"  # the judge calls the answer no answer at all (CompassVerifier's C)
    UNPARSED = "unparsed"  # the judge's reply held no verdict the template's parser reads


class RmStatus(_Vocabulary):
    OK = "ok"
    TRUNCATED = "truncated"  # scored on an input cut to max_length tokens
    MISSING = "missing"  # precomputed score absent or not finite
    ERROR = "error"  # this row could not be scored
    SKIPPED = "skipped"  # backend "none"


class HeroStatus(_Vocabulary):
    OK = "ok"
    RM_ONLY = "rm_only"  # no usable reference; RM-only scaling (on_bad_reference=rm_only)
    NO_REFERENCE = "no_reference"
    BAD_REFERENCE = "bad_reference"
    RM_MISSING = "rm_missing"  # a rollout of the group has no RM score
    RM_DISABLED = "rm_disabled"  # no reward model in this job


VERIFIER_STATUSES = VerifierStatus.values()
# The statuses of a verdict (score 1 or 0); the others leave the row unverified.
VERDICT_STATUSES = (VerifierStatus.OK, VerifierStatus.NO_ANSWER)
# The RM statuses of a row with a score (the others leave it unscored).
SCORED_STATUSES = (RmStatus.OK, RmStatus.TRUNCATED)
RM_STATUSES = RmStatus.values()
HERO_STATUSES = HeroStatus.values()
# Each status column of the output and the vocabulary its values come from.
STATUS_VOCABULARIES = {"verifier_status": VERIFIER_STATUSES, "rm_status": RM_STATUSES, "hero_status": HERO_STATUSES}

ERROR_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("prompt_id", pa.string()),
        pa.field("record", pa.string()),  # the input row as JSON, so nothing is lost whatever its types
    ]
)


# What pyarrow raises when values of one type cannot be converted to another.
_ARROW_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


class SchemaError(ValueError):
    """The input as a whole cannot be read under the contract (raised before any data moves)."""


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_chat(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    return pa.types.is_struct(item) and {"role", "content"} <= {item.field(i).name for i in range(item.num_fields)}


def _is_scalar_like(t: pa.DataType) -> bool:
    return _is_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


# What each canonical column accepts, and the type it is stored with.
def _column_problem(name: str, t: pa.DataType) -> str | None:
    """Returns why column `name` of type `t` breaks the contract, or None when it is acceptable."""
    if name == RESPONSE and not (_is_string(t) or pa.types.is_null(t)):
        return f"column 'response' has type {t}, expected string"
    if name == PROMPT and not (_is_string(t) or _is_chat(t) or pa.types.is_null(t)):
        return f"column 'prompt' has type {t}, expected string or list<struct<role, content>>"
    if name in (PROMPT_ID, REFERENCE, DATA_SOURCE) and not _is_scalar_like(t):
        return f"column '{name}' has type {t}, expected string"
    if name == SAMPLE_INDEX and not (pa.types.is_integer(t) or pa.types.is_null(t)):
        return f"column 'sample_index' has type {t}, expected an integer"
    return None


@dataclass(frozen=True)
class InputContract:
    """The unified schema every valid row is cast to, derived once from all input files' footers.

    Canonical columns get contract types (strings as `string`, chat prompts as list<struct<role,
    content>>); other columns keep their own type, unified across files (a column missing from a
    file is filled with nulls).
    """

    schema: pa.Schema  # includes ORDER as its last field

    @classmethod
    def from_file_schemas(cls, schemas: list[pa.Schema], sources: list[str] | None = None,
                          output_columns=tuple(LABEL_COLUMNS)) -> "InputContract":
        """The contract of files with these schemas; `sources` (their names) make errors name the files;
        `output_columns` are the columns the run adds (verifier, RM and the fusion's), which no input may hold."""
        if not schemas:
            raise SchemaError("no input files")
        sources = sources or [f"file {i}" for i in range(len(schemas))]

        def files_with(name: str, predicate) -> str:
            hits = [f"{src} ({s.field(name).type})" for src, s in zip(sources, schemas)
                    if name in s.names and predicate(s.field(name).type)]
            return ", ".join(hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
        names: list[str] = []
        for s in schemas:
            names.extend(n for n in s.names if n not in names)
        for required in (PROMPT, RESPONSE):
            if required not in names:
                raise SchemaError(
                    f"no input file has a '{required}' column (columns found: {', '.join(names)}); "
                    "rename the producer's columns to the contract (prompt_id, prompt, response, reference)"
                )
        prompt_types = {s.field(PROMPT).type for s in schemas if PROMPT in s.names}
        chat = any(_is_chat(t) for t in prompt_types)
        if chat and any(_is_string(t) for t in prompt_types):
            raise SchemaError(f"input files mix string prompts ({files_with(PROMPT, _is_string)}) and chat-message "
                              f"prompts ({files_with(PROMPT, _is_chat)}); relabel them in separate runs")
        canonical = {
            PROMPT_ID: pa.string(),
            # Chat prompts keep their message struct (extra fields such as "name" survive), unified across files.
            PROMPT: _unified_type(PROMPT, schemas, sources) if chat else pa.string(),
            RESPONSE: pa.string(),
            REFERENCE: pa.string(),
            DATA_SOURCE: pa.string(),
        }  # sample_index keeps its own integer type, unified across files like a pass-through column
        fields = [pa.field(PROMPT_ID, pa.string())]
        for name in names:
            if name == PROMPT_ID:
                continue
            if name in output_columns or name == ORDER:
                raise SchemaError(
                    f"input column '{name}' collides with an output column; drop or rename it before relabeling"
                )
            if name in canonical:
                fields.append(pa.field(name, canonical[name]))
                continue
            fields.append(pa.field(name, _unified_type(name, schemas, sources)))
        if REFERENCE not in names:
            fields.append(pa.field(REFERENCE, pa.string()))
        fields.append(pa.field(ORDER, pa.int64()))
        return cls(pa.schema(fields))

    def input_schema(self) -> pa.Schema:
        """The unified input columns as users see them (without the internal ORDER column)."""
        return pa.schema([f for f in self.schema if f.name != ORDER])

    def output_schema(self, fusion_fields=tuple(HERO_FIELDS), signal_fields=(), judge_fields=()) -> pa.Schema:
        """The schema of data/part-*.parquet: input columns, verifier columns (then the fallback judge's, when
        a run has one), RM columns (then each reward signal's, when a run has several), then the fusion's."""
        return pa.schema(list(self.input_schema()) + VERIFIER_FIELDS + list(judge_fields) + RM_FIELDS
                         + list(signal_fields) + list(fusion_fields))

    def scored_schema(self, signal_fields=(), judge_fields=()) -> pa.Schema:
        """Rows after verify and score, before fusion: what the group stage shuffles."""
        return pa.schema(list(self.schema) + VERIFIER_FIELDS + list(judge_fields) + RM_FIELDS + list(signal_fields))


def _unified_type(name: str, schemas: list[pa.Schema], sources: list[str]) -> pa.DataType:
    """One type that every file's `name` column converts to (e.g. int32 + int64 -> int64)."""
    typed = [(src, s.field(name).type) for src, s in zip(sources, schemas) if name in s.names]
    types = sorted({t for _, t in typed}, key=str)
    try:
        return pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive").field(
            name).type
    except _ARROW_CONVERSION_ERRORS as exc:
        examples = "; ".join(f"{t} in {next(src for src, u in typed if u == t)}" for t in types)
        raise SchemaError(f"column '{name}' has incompatible types across files: {examples}") from exc


def prompt_key(prompt) -> str:
    """Stable id for a prompt: first 16 hex digits of sha256 over its text (chat: canonical JSON)."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def error_records(table: pa.Table, row_positions, reasons: list[str], stage: str, source_files: list[str],
                  source_rows: list[int]) -> pa.Table:
    """Error records (ERROR_SCHEMA) for the rows of `table` at `row_positions`, one reason and source each."""
    rows = table.take(pa.array(row_positions, pa.int64())).to_pylist() if len(row_positions) else []
    ids = []
    for row in rows:
        pid = row.get(PROMPT_ID)
        ids.append(None if pid is None else str(pid))
    return pa.table(
        {
            "stage": [stage] * len(rows),
            "reason": reasons,
            "source_file": source_files,
            "source_row": [int(r) for r in source_rows],
            "prompt_id": ids,
            "record": [json.dumps({k: v for k, v in r.items() if k != ORDER and k not in LABEL_COLUMNS},
                                  default=_json_default, ensure_ascii=False) for r in rows],
        },
        schema=ERROR_SCHEMA,
    )


def _error_rows(table: pa.Table, row_positions: np.ndarray, reasons: list[str], stage: str,
                source_file: str, row_offset: int) -> pa.Table:
    return error_records(table, row_positions, reasons, stage, [source_file] * len(row_positions),
                         [row_offset + p for p in row_positions])


def split_duplicates(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(rows to keep, positions of later copies, position of the copy each one repeats).

    A later copy repeats an earlier row's (prompt_id, sample_index), earlier meaning a smaller ORDER
    (file, then row). Rows without sample_index are never duplicates. Vectorized: one sort.
    """
    none = np.zeros(0, dtype=np.int64)
    if SAMPLE_INDEX not in table.column_names or table.num_rows < 2:
        return table, none, none
    order = pc.sort_indices(table, sort_keys=[(PROMPT_ID, "ascending"), (SAMPLE_INDEX, "ascending"),
                                               (ORDER, "ascending")]).to_numpy()
    ids = table.column(PROMPT_ID).take(order).to_numpy(zero_copy_only=False)
    samples = table.column(SAMPLE_INDEX).take(order)
    present = samples.is_valid().to_numpy(zero_copy_only=False)
    values = pc.fill_null(samples, 0).to_numpy(zero_copy_only=False)
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (ids[1:] == ids[:-1]) & (values[1:] == values[:-1]) & present[1:] & present[:-1]
    if not repeat.any():
        return table, none, none
    first = np.maximum.accumulate(np.where(~repeat, np.arange(len(order)), 0))  # run start of each row
    duplicates, originals = order[repeat], order[first[repeat]]
    keep = np.ones(table.num_rows, dtype=bool)
    keep[duplicates] = False
    return table.filter(pa.array(keep)), duplicates, originals


def empty_errors() -> pa.Table:
    return ERROR_SCHEMA.empty_table()


def validate_batch(batch: pa.Table, contract: InputContract, *, source_file: str, file_index: int,
                   row_offset: int) -> tuple[pa.Table, pa.Table]:
    """Splits one input batch into (valid rows cast to the contract schema, error records).

    A row goes to errors when its response or prompt is null, or when a canonical column of its file
    has a type the contract cannot read (then every row of that batch does, with the column named).
    A null or absent prompt_id is replaced by a stable hash of the prompt. Cost: a few vectorized
    passes; Python-level work only for error rows and for rows whose prompt_id must be derived.
    """
    n = batch.num_rows
    positions = np.arange(n, dtype=np.int64)
    type_problems = [p for name in batch.column_names if (p := _column_problem(name, batch.schema.field(name).type))]
    if type_problems:
        reason = "; ".join(type_problems)
        return contract.schema.empty_table(), _error_rows(batch, positions, [reason] * n, "validate",
                                                          source_file, row_offset)
    reasons = np.full(n, None, dtype=object)
    for name in (PROMPT, RESPONSE):
        if name not in batch.column_names:
            reasons[:] = [f"{name} is missing" if r is None else r for r in reasons]
            continue
        null_mask = batch.column(name).is_null().to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(null_mask):
            reasons[i] = f"{name} is null" if reasons[i] is None else f"{reasons[i]}; {name} is null"
    bad = np.array([r is not None for r in reasons], dtype=bool)
    errors = _error_rows(batch, positions[bad], list(reasons[bad]), "validate", source_file, row_offset)
    good = batch.filter(pa.array(~bad)) if bad.any() else batch
    good_positions = positions[~bad]

    columns = {}
    for field in contract.schema:
        if field.name == ORDER:
            columns[ORDER] = pa.array((file_index << 32) + row_offset + good_positions, pa.int64())
        elif field.name in good.column_names:
            try:
                columns[field.name] = _cast_column(good.column(field.name), field)
            except _ARROW_CONVERSION_ERRORS as exc:
                reason = f"column '{field.name}' cannot be read as {field.type}: {exc}"
                return contract.schema.empty_table(), pa.concat_tables([errors, _error_rows(
                    batch, good_positions, [reason] * good.num_rows, "validate", source_file, row_offset)])
        elif field.name != PROMPT_ID:
            columns[field.name] = pa.nulls(good.num_rows, field.type)
    columns[PROMPT_ID] = _fill_prompt_ids(good, columns.get(PROMPT_ID))
    valid = pa.table([columns[f.name] for f in contract.schema], schema=contract.schema)
    return valid, errors


def _cast_column(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    if column.type == field.type:
        return column
    if pa.types.is_floating(column.type) and pa.types.is_string(field.type):
        # 18.0 -> "18", not "18.0": integral floats are how pandas stores integer answers with nulls.
        values = [None if v is None else (str(int(v)) if float(v).is_integer() else repr(v)) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.string())])
    return column.cast(field.type)


def _fill_prompt_ids(table: pa.Table, ids: pa.ChunkedArray | None) -> pa.ChunkedArray:
    if ids is not None and ids.null_count == 0:
        return ids
    prompts = table.column(PROMPT).to_pylist()
    current = ids.to_pylist() if ids is not None else [None] * table.num_rows
    return pa.chunked_array([pa.array([pid if pid is not None else prompt_key(p) for pid, p in zip(current, prompts)],
                                      pa.string())])


def bucket_of(prompt_ids: pa.ChunkedArray | pa.Array, num_buckets: int) -> np.ndarray:
    """Shard index of each row: crc32(prompt_id) % num_buckets, stable across runs and machines.

    Hashes each distinct prompt_id once (dictionary encoding), so cost is per group, not per row.
    """
    import zlib

    if num_buckets == 1:
        return np.zeros(len(prompt_ids), dtype=np.int64)
    encoded = pc.dictionary_encode(prompt_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_key = np.array([zlib.crc32(k.encode("utf-8")) % num_buckets for k in encoded.dictionary.to_pylist()],
                       dtype=np.int64)
    return per_key[encoded.indices.to_numpy(zero_copy_only=False)]
