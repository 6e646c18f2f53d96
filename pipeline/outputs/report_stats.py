"""What keeps the run report's memory flat: exact counts and moments streamed shard by shard, and a
deterministic sample of whole prompt groups for what needs the rows themselves.

Exact at any size: rows per data_source and verifier class, pass rates, and each score's rows, mean, std,
min and max per verifier class (merged shard by shard, Chan et al.'s pairwise update). Up to SAMPLE_ROWS
output rows everything else is exact too; above, medians, the AUROCs, the reward-signal section and the
plots come from the groups whose prompt_id hashes below SAMPLE_ROWS / output rows (whole groups, so a
per-group AUROC is over a complete group; the same groups on every rebuild). Memory: a sampled row costs
about 300 bytes in the report's columns, so at most about 150 MB whatever the output's size; a shard is
read one at a time.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import VERDICT_STATUSES

SAMPLE_ROWS = 500_000
CLASSES = ("correct", "incorrect", "unverified")
MISSING = "(none)"  # a null data_source or rule, as a key (every section of the report)


def verifier_class(scores: np.ndarray, statuses) -> np.ndarray:
    """correct / incorrect (a verified verdict: status ok or no_answer) / unverified, per row (`statuses`: an
    Arrow string column, or anything numpy.isin takes)."""
    if isinstance(statuses, (pa.Array, pa.ChunkedArray)):
        verified = pc.fill_null(pc.is_in(statuses, pa.array(list(VERDICT_STATUSES))), False).to_numpy(
            zero_copy_only=False)
    else:
        verified = np.isin(statuses, list(VERDICT_STATUSES))
    return np.where(~verified | np.isnan(scores), "unverified", np.where(scores == 1.0, "correct", "incorrect"))


def sample_fraction(output_rows) -> float:
    """The share of prompt groups the report keeps: 1 up to SAMPLE_ROWS output rows (or when unknown)."""
    return 1.0 if not output_rows or output_rows <= SAMPLE_ROWS else SAMPLE_ROWS / output_rows


def sampled_groups(prompt_ids: pa.ChunkedArray, fraction: float) -> pa.Array:
    """A mask of the rows whose prompt group is in the sample: its id's BLAKE2b hash below `fraction`."""
    encoded = pc.dictionary_encode(prompt_ids).combine_chunks()
    threshold = fraction * 2.0**64
    keep = np.array([int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8).digest(), "little") < threshold
                     for p in encoded.dictionary.to_pylist()] + [False], dtype=bool)
    indices = pc.fill_null(encoded.indices, len(keep) - 1).to_numpy(zero_copy_only=False)
    return pa.array(keep[indices])


class Moments:
    """Rows, mean, M2 (sum of squared deviations), min and max of a stream of arrays; NaN values skipped."""

    def __init__(self):
        self.n, self.mean, self.m2, self.low, self.high = 0, 0.0, 0.0, math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        n, mean = len(values), float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def summary(self, sample: np.ndarray) -> dict:
        """The report's summary: exact rows, mean, std, min, max; the median of `sample` (the values of the
        sampled rows, which are all of them up to SAMPLE_ROWS)."""
        if not self.n:
            return {"rows": 0}
        sample = sample[~np.isnan(sample)]
        median = round(float(np.median(sample)), 6) if len(sample) else None
        return {"rows": self.n, "mean": round(self.mean, 6), "std": round(math.sqrt(self.m2 / self.n), 6),
                "min": round(self.low, 6), "median": median, "max": round(self.high, 6)}


class ExactTally:
    """Rows and pass rates per data_source and the moments of rm_score and the reward per verifier class,
    added shard by shard (the tally calls of report.read_columns, on the shard's report columns)."""

    SERIES = ("rm_score", "reward")

    def __init__(self):
        self.by_source: dict[str, list[int]] = {}  # data_source -> [rows, verified, correct]
        self.moments = {(s, c): Moments() for s in self.SERIES for c in (*CLASSES, None)}

    def columns(self, schema: pa.Schema) -> list[str]:
        return []

    def add(self, table: pa.Table, extra: pa.Table, parquet) -> None:
        scores = table.column("verifier_score").to_numpy(zero_copy_only=False).astype(float)
        classes = verifier_class(scores, table.column("verifier_status"))
        sources = pc.dictionary_encode(pc.fill_null(table.column("data_source"), MISSING)).combine_chunks()
        codes = sources.indices.to_numpy(zero_copy_only=False)
        for code, source in enumerate(sources.dictionary.to_pylist()):
            mine = classes[codes == code]
            counts = self.by_source.setdefault(source, [0, 0, 0])
            counts[0] += len(mine)
            counts[1] += int((mine != "unverified").sum())
            counts[2] += int((mine == "correct").sum())
        for series in self.SERIES:
            values = table.column(series).to_numpy(zero_copy_only=False).astype(float)
            self.moments[(series, None)].add(values)
            for c in CLASSES:
                self.moments[(series, c)].add(values[classes == c])

    def pass_rates(self) -> dict:
        return {source: {"rows": rows, "verified": verified,
                         "pass_rate": round(correct / verified, 6) if verified else None}
                for source, (rows, verified, correct) in sorted(self.by_source.items())}

    def summary(self, series: str, verifier_class_name: str | None, sample: np.ndarray) -> dict:
        return self.moments[(series, verifier_class_name)].summary(sample)
