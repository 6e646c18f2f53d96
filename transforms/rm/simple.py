"""The backends that run no model: "none" (verifier only) and "precomputed" (scores from an input column)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.rollouts import RmStatus
from transforms.rm import RewardBackend, rm_columns


class NoRewardModel(RewardBackend):
    """Backend "none": every rollout unscored, status "skipped"."""

    def score_table(self, table: pa.Table) -> pa.Table:
        return rm_columns(table, np.full(table.num_rows, np.nan), [RmStatus.SKIPPED] * table.num_rows)


class PrecomputedScores(RewardBackend):
    """Backend "precomputed": scores read from `score_column`; null or NaN values become "missing"."""

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if not config.score_column:
            raise ValueError("rm.score_column is required with rm.backend=precomputed")

    def identity(self) -> dict:
        return {"backend": "precomputed", "name": f"column:{self.config.score_column}"}

    def check_schema(self, schema: pa.Schema):
        """Fails before any data moves when the score column is absent or not numeric."""
        column = self.config.score_column
        if column not in schema.names:
            raise ValueError(f"rm.score_column {column!r} is not an input column (columns: {', '.join(schema.names)})")
        t = schema.field(column).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)):
            raise ValueError(f"rm.score_column {column!r} has type {t}, expected a number")

    def score_table(self, table: pa.Table) -> pa.Table:
        column = table.column(self.config.score_column).cast(pa.float64())
        scores = column.to_numpy() if column.null_count == 0 else np.array(
            [np.nan if v is None else v for v in column.to_pylist()], dtype=np.float64)
        scores = np.where(np.isfinite(scores), scores, np.nan)
        statuses = np.where(np.isnan(scores), RmStatus.MISSING, RmStatus.OK).tolist()
        return rm_columns(table, scores, statuses)
