"""An ensemble of reward signals as the fusion's RM score: `--rm-ensemble mean|min|uwo` over every named signal.

Each member is first z-scored over the whole job (z = (s - mean) / std, population std over the rows it
scored; a member whose std is below 1e-9 x max(1, |mean|) is constant, z = 0), so that scales agree, then per row:
    mean: mean_j z_j      min: min_j z_j      uwo: mean_j z_j - lambda * var_j z_j
(uwo: uncertainty-weighted optimization, Coste et al., arXiv 2310.02743; var across members, ddof 0).
`rm_score` then holds the ensemble's value (float32, on the z scale) and `rm_status` is ok only where every
member is (otherwise the worst member status: error, missing, skipped, truncated); a row where some member
has no score has no ensemble score.

Behind the Fusion contract as a wrapper of the chosen fusion (hero, rm, posterior): one more pass for the
job statistic (each member's count, mean and squared deviations per bucket, combined pairwise; math.fsum,
so the same whatever order buckets arrive in),
then the wrapped fusion's own passes and fuse over the table with rm_score replaced. Cost: a few numpy
operations per member and row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import SCORED_STATUSES, RmStatus
from transforms.checks import ALWAYS, is_finite_number, option
from transforms.fuse import Fusion

ENSEMBLE_MODES = ("none", "mean", "min", "uwo")
# Worst first: the status an ensemble row takes when its members' statuses differ.
STATUS_PRECEDENCE = (RmStatus.ERROR, RmStatus.MISSING, RmStatus.SKIPPED, RmStatus.TRUNCATED, RmStatus.OK)
CONSTANT_SPREAD = 1e-9


@dataclass(frozen=True)
class EnsembleConfig:
    """How several reward signals make the one RM score of hero, rm and posterior (stored only when set).

    mode none: rm_score is --fusion-rm's signal (the first by default).
    """

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


    mode: str = option(
        "combine every reward signal (--rm-model names several), each z-scored over the job, into `rm_score`: "
        "`mean`, `min`, or `uwo` (mean minus --uwo-lambda times the variance across signals)",
        name="rm_ensemble", group="fusion", choices=ENSEMBLE_MODES, default="none", stored=ALWAYS)
    uwo_lambda: float = option(
        "weight of the variance across signals in `--rm-ensemble uwo`",
        group="fusion", default=0.5, stored=ALWAYS)

    def __post_init__(self):
        if self.mode not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble.mode must be one of {ENSEMBLE_MODES}, got {self.mode!r}")
        if not (is_finite_number(self.uwo_lambda) and self.uwo_lambda >= 0):
            raise ValueError(f"ensemble.uwo_lambda must be a number >= 0, got {self.uwo_lambda!r}")


def ensemble_scores(scores: list[np.ndarray], mode: str, uwo_lambda: float) -> np.ndarray:
    """The ensemble of z-scored members (rows x members as a list of arrays; NaN where unscored)."""
    stacked = np.stack(scores)
    if mode == "mean":
        return stacked.mean(axis=0)
    if mode == "min":
        return stacked.min(axis=0)
    return stacked.mean(axis=0) - uwo_lambda * stacked.var(axis=0)


class EnsembleFusion(Fusion):
    """The wrapped fusion over the ensemble's rm_score; its statistic is (members' z stats, the wrapped one)."""

    def __init__(self, inner: Fusion, config: EnsembleConfig, signals):
        if len(signals) < 2:
            raise ValueError(f"ensemble.mode {config.mode} needs several reward signals (--rm-model NAME=...,"
                             f"NAME=...), this run has {len(signals)}")
        if inner.name == "gdpo":
            raise ValueError("ensemble.mode does not apply to pipeline.fusion gdpo, which normalizes each reward "
                             "signal on its own")
        super().__init__(inner.settings, inner.rm_scores)
        self.inner, self.config, self.signals = inner, config, tuple(signals)
        for name in ("name", "reward_column", "fields", "statuses", "column_notes"):
            setattr(self, name, getattr(inner, name))
        self.column_notes = {**inner.column_notes,
                             "rm_score": f"the {config.mode} of the z-scored reward signals (manifest: rm_ensemble)",
                             "rm_status": "ok where every signal is, else the worst signal's status"}
        self.rounds = inner.rounds + 1
        members = [c for s in self.signals for c in (s.score_column, s.status_column)]
        self.partial_columns = tuple(dict.fromkeys(inner.partial_columns + tuple(members)))

    @property
    def title(self) -> str:
        return f"{self.inner.title}, its RM score the {self.config.mode} of {len(self.signals)} z-scored signals"

    def _member(self, table: pa.Table, signal) -> np.ndarray:
        scores = pc.fill_null(table.column(signal.score_column).cast(pa.float64()), np.nan).to_numpy()
        scored = pc.fill_null(pc.is_in(table.column(signal.status_column), pa.array(SCORED_STATUSES)), False)
        return np.where(scored.to_numpy(zero_copy_only=False), scores, np.nan)

    def with_ensemble(self, table: pa.Table, stats: dict) -> pa.Table:
        """`table` with rm_score / rm_status the ensemble's (stats: member -> (mean, std) over the job)."""
        z = []
        for signal in self.signals:
            mean, std = stats[signal.name]
            centered = self._member(table, signal) - mean
            z.append(centered / std if std > 0 else centered * 0.0)  # a constant member: 0 (NaN stays NaN)
        value = ensemble_scores(z, self.config.mode, self.config.uwo_lambda)
        statuses = [table.column(s.status_column) for s in self.signals]
        status = pa.array([RmStatus.OK] * table.num_rows, pa.string())
        for candidate in reversed(STATUS_PRECEDENCE[:-1]):  # the worst one present wins
            hit = None
            for column in statuses:
                matched = pc.fill_null(pc.equal(column, candidate), False)
                hit = matched if hit is None else pc.or_(hit, matched)
            status = pc.if_else(hit, candidate, status)
        score = pa.array(np.where(np.isnan(value), 0.0, value), pa.float64(), mask=np.isnan(value)).cast(pa.float32())
        for name, column in (("rm_score", score), ("rm_status", status)):
            position = table.schema.get_field_index(name)  # -1 in a partial pass's columns without it
            table = (table.set_column(position, table.schema.field(name), column) if position >= 0
                     else table.append_column(name, column))
        return table

    def check_reward_model(self, identity: dict) -> None:
        self.inner.check_reward_model(identity)

    def known_statistic(self):
        return None

    def partial(self, table: pa.Table, earlier=None):
        if earlier is None:  # the first pass: each member's count, mean and squared deviations from it
            out = {}
            for signal in self.signals:
                values = self._member(table, signal)
                values = values[~np.isnan(values)]
                mean = math.fsum(values) / len(values) if len(values) else 0.0
                out[signal.name] = (len(values), mean, math.fsum((values - mean) ** 2))
            return out
        stats, inner_earlier = earlier
        return self.inner.partial(self.with_ensemble(table, stats), inner_earlier)

    def combine(self, partials, earlier=None):
        partials = list(partials)
        if earlier is None:
            stats = {}
            for signal in self.signals:
                parts = [p[signal.name] for p in partials if p[signal.name][0]]
                count = sum(n for n, _, _ in parts)
                mean = math.fsum(n * m for n, m, _ in parts) / count if count else 0.0
                # Chan et al.'s pairwise combination: each bucket's squared deviations, moved to the job mean.
                squares = math.fsum(m2 + n * (m - mean) ** 2 for n, m, m2 in parts)
                std = math.sqrt(squares / count) if count else 0.0
                # A member whose spread is below CONSTANT_SPREAD (relative to its mean, at least 1) is constant
                # (z = 0): the rounding noise of the sums, not a scale.
                stats[signal.name] = (mean, std if std > CONSTANT_SPREAD * max(1.0, abs(mean)) else 0.0)
            return stats, self.inner.known_statistic()
        stats, inner_earlier = earlier
        return stats, self.inner.combine(partials, inner_earlier)

    def fuse(self, table: pa.Table, statistic) -> pa.Table:
        stats, inner_statistic = statistic
        return self.inner.fuse(self.with_ensemble(table, stats), inner_statistic)

    def shard_metadata(self, statistic) -> dict:
        stats, inner_statistic = statistic
        return {**self.inner.shard_metadata(inner_statistic),
                "rm_ensemble": {"mode": self.config.mode, "members": {n: {"mean": m, "std": s}
                                                                      for n, (m, s) in stats.items()},
                                **({"uwo_lambda": self.config.uwo_lambda} if self.config.mode == "uwo" else {})}}

    def manifest(self, shard_metadata: dict) -> dict:
        return {**self.inner.manifest(shard_metadata), "rm_ensemble": shard_metadata.get("rm_ensemble")}
