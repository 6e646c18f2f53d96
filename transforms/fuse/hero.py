"""HERO fusion (arXiv 2510.07242): stratified normalization + variance-aware weighting, per prompt group.

Formulas, defaults and edge cases follow docs/HERO.md exactly:
  r_hat  = -alpha + 2 alpha (s - min)/(max - min + eps)      for verifier-incorrect rollouts
         = (1 - beta) + 2 beta (s - min)/(max - min + eps)   for verifier-correct rollouts
           (min/max over that verifier class of the group only)
  w      = w_min + (w_max - w_min) * sigmoid(k (sigma_u - sigma_bar)),  sigma_u = population std of s
  reward = w * r_hat ;  advantage = w (r_hat - mean) / (std + eps)  ("grpo")  or  w (r_hat - mean)  ("mean-only")

Everything is vectorized with numpy over a table holding many complete groups (no per-row Python):
about 1 microsecond per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import HERO_FIELDS, HERO_STATUSES, ORDER, PROMPT_ID, HeroStatus, RmStatus, VerifierStatus
from transforms.checks import ALWAYS, is_finite_number, option
from transforms.fuse import Fusion, group_advantage, group_segments

TIE_PLACEMENTS = ("bottom", "middle")
ADVANTAGE_MODES = ("grpo", "mean-only")
BAD_REFERENCE_POLICIES = ("null", "rm_only")


@dataclass(frozen=True)
class HeroConfig:
    """HERO settings; defaults are the paper appendix's (docs/HERO.md).

    sigma_bar: None = exact mean of sigma_u over the job's groups; a number = fixed scale, for stable
    incremental relabeling. tie_placement: where a one-rollout or all-tied verifier class lands in its band.
    on_bad_reference: "null" leaves hero columns null for groups without a usable reference;
    "rm_only" min-max normalizes their RM scores into [-alpha, 1 + beta] instead.
    """

    alpha: float = option(
        "half-width of the incorrect band `[-α, α]`; α + β < 1",
        group="fusion", default=0.1, stored=ALWAYS)
    beta: float = option(
        "half-width of the correct band `[1-β, 1+β]`",
        group="fusion", default=0.1, stored=ALWAYS)
    eps: float = option(
        "min-max and advantage epsilon",
        group="fusion", default=1e-6, stored=ALWAYS)
    w_min: float = option(
        "lowest difficulty weight: `w = w_min + (w_max-w_min)·sigmoid(k(σ_u - σ̄))`",
        group="fusion", default=0.4, stored=ALWAYS)
    w_max: float = option(
        "highest difficulty weight",
        group="fusion", default=3.0, stored=ALWAYS)
    k: float = option(
        "sigmoid steepness of the difficulty weight",
        group="fusion", default=6.0, stored=ALWAYS)
    sigma_bar: float | None = option(
        "fixed σ̄ (stable incremental relabeling)",
        group="fusion", default_text="job mean of σ_u", default=None, stored=ALWAYS)
    tie_placement: str = option(
        "where a single or all-tied verifier class lands in its band",
        group="fusion", choices=TIE_PLACEMENTS, default="bottom", stored=ALWAYS)
    advantage_mode: str = option(
        "`grpo`: `w·(r̂-mean)/(std+eps)`; `mean-only`: `w·(r̂-mean)`",
        group="fusion", choices=ADVANTAGE_MODES, default="grpo", stored=ALWAYS)
    on_bad_reference: str = option(
        "groups without a usable reference: `null` hero columns, or `rm_only` (RM min-max into `[-α, 1+β]`)",
        group="fusion", choices=BAD_REFERENCE_POLICIES, default="null", stored=ALWAYS)

    def __post_init__(self):
        for name in ("alpha", "beta", "eps", "w_min", "w_max", "k"):
            value = getattr(self, name)
            if not is_finite_number(value):
                raise ValueError(f"hero.{name} must be a finite number, got {value!r}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"hero.alpha and hero.beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.alpha + self.beta >= 1:
            raise ValueError(
                f"hero.alpha + hero.beta must be < 1 so the correct band [1-beta, 1+beta] stays above the "
                f"incorrect band [-alpha, alpha]; got alpha={self.alpha}, beta={self.beta}"
            )
        if self.eps <= 0:
            raise ValueError(f"hero.eps must be > 0, got {self.eps}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"hero.w_min must satisfy 0 <= w_min <= w_max, got w_min={self.w_min}, w_max={self.w_max}")
        if self.k < 0:
            raise ValueError(f"hero.k must be >= 0, got {self.k}")
        if self.sigma_bar is not None and not (is_finite_number(self.sigma_bar) and self.sigma_bar >= 0):
            raise ValueError(f"hero.sigma_bar must be a finite number >= 0 or unset, got {self.sigma_bar!r}")
        if self.tie_placement not in TIE_PLACEMENTS:
            raise ValueError(f"hero.tie_placement must be one of {TIE_PLACEMENTS}, got {self.tie_placement!r}")
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(f"hero.advantage_mode must be one of {ADVANTAGE_MODES}, got {self.advantage_mode!r}")
        if self.on_bad_reference not in BAD_REFERENCE_POLICIES:
            raise ValueError(
                f"hero.on_bad_reference must be one of {BAD_REFERENCE_POLICIES}, got {self.on_bad_reference!r}")


@dataclass
class _Groups:
    """A table sorted by (prompt_id, order) and the segment layout of its groups."""

    table: pa.Table
    starts: np.ndarray  # first row of each group
    sizes: np.ndarray
    group_of_row: np.ndarray
    scores: np.ndarray  # rm_score as float64, NaN where missing
    complete: np.ndarray  # per group: every rollout has an RM score
    sigma: np.ndarray  # per group: population std of rm_score (NaN unless complete)


def _segment_sum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts) if len(values) else np.zeros(0)


def _layout(table: pa.Table) -> _Groups:
    table, starts, sizes, group_of_row = group_segments(table)
    scores = pc.fill_null(table.column("rm_score").cast(pa.float64()), np.nan).to_numpy()
    missing = np.isnan(scores)
    complete = _segment_sum(missing.astype(np.int64), starts) == 0
    filled = np.where(missing, 0.0, scores)
    mean = _segment_sum(filled, starts) / np.maximum(sizes, 1)
    var = _segment_sum((filled - mean[group_of_row]) ** 2, starts) / np.maximum(sizes, 1)
    sigma = np.where(complete, np.sqrt(var), np.nan)
    return _Groups(table, starts, sizes, group_of_row, scores, complete, sigma)


def sigma_partial(table: pa.Table) -> tuple[float, int]:
    """(sum of sigma_u, number of groups) over the complete groups of `table` with >= 2 rollouts.

    Feed the partials of every shard to a global combine: sigma_bar = total sum / total count.
    `table` must hold whole groups (the grouping stage guarantees it).
    """
    if table.num_rows == 0:
        return 0.0, 0
    groups = _layout(table)
    eligible = groups.complete & (groups.sizes >= 2)
    return float(groups.sigma[eligible].sum()), int(eligible.sum())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


def _band_position(scores, keys, n_keys, eps, tie_placement):
    """(s - min) / (max - min + eps) within each key's rows; ties / singletons per tie_placement."""
    lows = np.full(n_keys, np.inf)
    highs = np.full(n_keys, -np.inf)
    np.minimum.at(lows, keys, scores)
    np.maximum.at(highs, keys, scores)
    span = highs[keys] - lows[keys]
    position = (scores - lows[keys]) / (span + eps)
    if tie_placement == "middle":
        position = np.where(span == 0, 0.5, position)
    return position


def fuse(table: pa.Table, config: HeroConfig, sigma_bar: float | None) -> pa.Table:
    """Adds the HERO columns to a table of complete prompt groups; returns it sorted by (prompt_id, order).

    Needs columns prompt_id, ORDER, verifier_score, verifier_status, rm_score, rm_status.
    sigma_bar None means no RM scores in this job (backend "none"): hero columns are null.
    """
    if table.num_rows == 0:
        empty = table.schema
        for f in HERO_FIELDS:
            empty = empty.append(f)
        return empty.empty_table()
    g = _layout(table)
    table, gid = g.table, g.group_of_row
    n_groups = len(g.starts)

    def any_in_group(column: str, value: str) -> np.ndarray:
        hits = pc.equal(table.column(column), value).to_numpy(zero_copy_only=False).astype(np.int64)
        return _segment_sum(hits, g.starts) > 0

    no_reference = any_in_group("verifier_status", VerifierStatus.NO_REFERENCE)
    bad_reference = any_in_group("verifier_status", VerifierStatus.BAD_REFERENCE)
    rm_skipped = any_in_group("rm_status", RmStatus.SKIPPED)

    group_status = np.full(n_groups, HeroStatus.OK, dtype=object)
    reference_unusable = no_reference | bad_reference
    if config.on_bad_reference == "rm_only":
        group_status[reference_unusable] = HeroStatus.RM_ONLY
    else:
        group_status[bad_reference] = HeroStatus.BAD_REFERENCE
        group_status[no_reference] = HeroStatus.NO_REFERENCE
    stratifiable = (group_status != HeroStatus.NO_REFERENCE) & (group_status != HeroStatus.BAD_REFERENCE)
    group_status[~g.complete & stratifiable] = HeroStatus.RM_MISSING
    group_status[rm_skipped] = HeroStatus.RM_DISABLED
    if sigma_bar is None:
        group_status[:] = HeroStatus.RM_DISABLED
    row_status = group_status[gid]
    computed = (row_status == HeroStatus.OK) | (row_status == HeroStatus.RM_ONLY)

    scores = np.where(np.isnan(g.scores), 0.0, g.scores)
    correct = pc.fill_null(table.column("verifier_score"), 0.0).to_numpy(zero_copy_only=False) == 1.0
    # Stratified normalization: min/max over (group, verifier class).
    position = _band_position(scores, gid * 2 + correct, 2 * n_groups, config.eps, config.tie_placement)
    r_hat = np.where(correct, (1 - config.beta) + 2 * config.beta * position,
                     -config.alpha + 2 * config.alpha * position)
    rm_only = row_status == HeroStatus.RM_ONLY
    if rm_only.any():
        whole_group = _band_position(scores, gid, n_groups, config.eps, config.tie_placement)
        r_hat = np.where(rm_only, -config.alpha + (1 + config.beta + config.alpha) * whole_group, r_hat)

    sigma = g.sigma[gid]
    spread = config.k * (np.nan_to_num(sigma) - (sigma_bar or 0.0))
    weight = config.w_min + (config.w_max - config.w_min) * _sigmoid(spread)
    advantage = weight * group_advantage(r_hat, computed, g.starts, np.maximum(g.sizes, 1), gid, config.eps,
                                         config.advantage_mode)

    def masked(values: np.ndarray, keep: np.ndarray) -> pa.Array:
        return pa.array(values, pa.float64(), mask=~keep)

    columns = {
        "group_size": pa.array(g.sizes[gid], pa.int32()),
        "group_rm_std": masked(np.nan_to_num(sigma), ~np.isnan(sigma)),
        "hero_normalized": masked(r_hat, computed),
        "difficulty_weight": masked(weight, computed),
        "hero_reward": masked(weight * r_hat, computed),
        "advantage": masked(advantage, computed),
        "hero_status": pa.array(row_status.tolist(), pa.string()),
    }
    for f in HERO_FIELDS:
        table = table.append_column(f, columns[f.name])
    return table


class HeroFusion(Fusion):
    """HERO behind the Fusion contract: the job statistic is sigma_bar, the exact mean of sigma_u over
    the job's complete groups (or --sigma-bar, fixed; or none without RM scores: hero columns null)."""

    name = "hero"
    reward_column = "hero_reward"
    title = "the HERO fusion of both per prompt group (arXiv 2510.07242)"
    fields = tuple(HERO_FIELDS)
    statuses = {"hero_status": HERO_STATUSES}
    column_notes = {
        "group_size": "responses of the prompt",
        "group_rm_std": "sigma_u, population standard deviation of rm_score in the group",
        "hero_normalized": "r-hat: the RM score normalized inside the verifier's band",
        "difficulty_weight": "w(sigma_u), the variance-aware weight",
        "hero_reward": "w * r-hat, the HERO reward",
        "advantage": "per --advantage-mode",
        "hero_status": "ok, rm_only, no_reference, bad_reference, rm_missing, rm_disabled",
    }
    partial_columns = (PROMPT_ID, ORDER, "rm_score")
    SIGMA_SOURCES = {"none": "none (rm backend none)", "fixed": "fixed",
                     "job_mean": "mean of sigma_u over the job's groups"}

    def __init__(self, settings, rm_scores: bool):
        super().__init__(settings, rm_scores)
        self.config: HeroConfig = settings["hero"]
        self.rounds = 1 if self.sigma_mode == "job_mean" else 0

    @property
    def sigma_mode(self) -> str:
        """"none" (no RM scores), "fixed" (--sigma-bar) or "job_mean" (computed from every group)."""
        if not self.rm_scores:
            return "none"
        return "fixed" if self.config.sigma_bar is not None else "job_mean"

    def known_statistic(self) -> float | None:
        return float(self.config.sigma_bar) if self.sigma_mode == "fixed" else None

    def partial(self, table: pa.Table, earlier=None) -> tuple[float, int]:
        return sigma_partial(table)

    def combine(self, partials, earlier=None) -> float:
        """The exact mean of sigma_u over all groups; math.fsum makes it independent of arrival order."""
        partials = list(partials)
        count = sum(c for _, c in partials)
        return math.fsum(s for s, _ in partials) / count if count else 0.0

    def fuse(self, table: pa.Table, statistic: float | None) -> pa.Table:
        return fuse(table, self.config, statistic)

    def shard_metadata(self, statistic: float | None) -> dict:
        return {"sigma_bar": statistic}

    def manifest(self, shard_metadata: dict) -> dict:
        return {"sigma_bar": shard_metadata.get("sigma_bar"), "sigma_bar_source": self.SIGMA_SOURCES[self.sigma_mode]}
