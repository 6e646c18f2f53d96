"""Posterior fusion: the probability that a response is correct given its verdict and its RM score.

A verifier with known error rates and a reward model, calibrated on labelled data (--calibration: a
labelled output of this tool, rows with label_correct, a verdict and the same RM's score):

    logit P(c | v, s) = logit P(c | s) + log P(v | c=1) / P(v | c=0)
    log term = log((1 - rho1) / rho0)   for v = 1      rho0 = P(v=1 | c=0), the false-positive rate
             = log(rho1 / (1 - rho0))   for v = 0      rho1 = P(v=0 | c=1), the false-negative rate

P(c | s) is a logistic fit on the RM score (Newton's method on the standardized score, a small fixed L2
penalty RIDGE on the slope so that separable data still has a finite fit); rho0 and rho1 are add-one (Laplace)
estimates, so they never reach 0; rho0 + rho1 >= 1 (a verifier no better than chance) is refused. A null
verdict uses P(c | s) alone; a row without an RM score uses the calibration's base rate in place of
P(c | s). --calibration-per-source fits each data_source with enough rows on its own (the others use the
pooled fit). The fit happens on the driver before any data moves; fewer than MIN_PER_CLASS labelled
correct or incorrect rows is an error. Fusing is a few numpy operations per row.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.rollouts import SCORED_STATUSES, VERDICT_STATUSES
from transforms.checks import ALWAYS, NEVER, option
from transforms.fuse import Fusion, group_advantage, group_segments

MIN_PER_CLASS = 20  # labelled rows of each class (correct, incorrect) a fit needs
RIDGE = 0.1  # L2 penalty on the standardized slope: a fixed prior, so it fades as the calibration grows
LABEL = "label_correct"
POOLED = "(all)"
CALIBRATION_COLUMNS = (LABEL, "verifier_score", "verifier_status", "rm_score", "rm_status")
POSTERIOR_STATUSES = ("ok", "rm_missing", "no_verdict", "prior")


@dataclass(frozen=True)
class PosteriorConfig:
    """Where the posterior's calibration comes from (stored in posterior runs only; the fit itself is in
    every shard's metadata, so a changed calibration file changes the output's bytes)."""

    calibration: str = option(
        "a labelled output of this tool (or Parquet files) with `label_correct`, verdicts and the same RM's "
        "scores, to calibrate `--fusion posterior` on",
        group="fusion", default_text="required for posterior", default="", stored=NEVER)
    per_source: bool = option(
        "fit `--fusion posterior` per data_source where a source has enough labelled rows (others: the pooled fit)",
        name="calibration_per_source", group="fusion", default=False, stored=ALWAYS)


@dataclass(frozen=True)
class Calibration:
    """One fit: error rates, the logistic's coefficients on the raw score, the base rate and row counts."""

    rho0: float
    rho1: float
    intercept: float
    slope: float
    base_rate: float
    rows: int
    correct: int

    def verdict_term(self, verdict: np.ndarray) -> np.ndarray:
        """log P(v | c=1) / P(v | c=0) per row (verdict 1.0 or 0.0; NaN: none, term 0)."""
        term = np.where(verdict == 1.0, math.log((1 - self.rho1) / self.rho0), math.log(self.rho1 / (1 - self.rho0)))
        return np.where(np.isnan(verdict), 0.0, term)

    def logit(self, verdict: np.ndarray, score: np.ndarray) -> np.ndarray:
        base = math.log(self.base_rate / (1 - self.base_rate))
        return np.where(np.isnan(score), base, self.intercept + self.slope * np.nan_to_num(score)) + \
            self.verdict_term(verdict)

    def as_dict(self) -> dict:
        return {"rho0": self.rho0, "rho1": self.rho1, "intercept": self.intercept, "slope": self.slope,
                "base_rate": self.base_rate, "rows": self.rows, "correct": self.correct}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(score: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of P(c | s) = sigmoid(intercept + slope s), by Newton's method on standardized s."""
    center, scale = float(score.mean()), float(score.std()) or 1.0
    x = np.stack([np.ones_like(score), (score - center) / scale], axis=1)
    beta = np.zeros(2)
    penalty = np.diag([0.0, RIDGE])
    for _ in range(100):
        p = sigmoid(x @ beta)
        gradient = x.T @ (label - p) - penalty @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-12:
            break
    slope = beta[1] / scale
    return float(beta[0] - slope * center), float(slope)


def fit(label: np.ndarray, verdict: np.ndarray, score: np.ndarray, where: str) -> Calibration:
    """A calibration from labelled rows (label bool, verdict 0/1, score finite). Raises ValueError with the
    counts when there are too few, or when the verifier is no better than chance."""
    correct = int(label.sum())
    incorrect = len(label) - correct
    if min(correct, incorrect) < MIN_PER_CLASS:
        raise ValueError(f"posterior.calibration {where}: {len(label)} usable labelled rows ({correct} correct, "
                         f"{incorrect} incorrect); a fit needs at least {MIN_PER_CLASS} of each (rows with "
                         f"label_correct, a verdict and an RM score)")
    rho0 = (int(((verdict == 1) & ~label).sum()) + 1) / (incorrect + 2)
    rho1 = (int(((verdict == 0) & label).sum()) + 1) / (correct + 2)
    if rho0 + rho1 >= 1:
        raise ValueError(f"posterior.calibration {where}: false-positive rate {rho0:.3f} + false-negative rate "
                         f"{rho1:.3f} >= 1: the verifier is no better than chance on it")
    intercept, slope = fit_logistic(score, label.astype(np.float64))
    return Calibration(rho0, rho1, intercept, slope, (correct + 1) / (len(label) + 2), len(label), correct)


def read_calibration(path: str) -> tuple[pa.Table, dict | None]:
    """The labelled rows of a herolabel output (its data/ and manifest's reward model) or of Parquet files."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise ValueError(f"posterior.calibration {path} does not exist")
    files = sorted(fs.glob(f"{root}/data/*.parquet")) or sorted(fs.glob(f"{root}/**/*.parquet")) or [root]
    tables = []
    for name in files:
        with fs.open(name, "rb") as handle:
            schema = pq.read_schema(handle)
            missing = [c for c in CALIBRATION_COLUMNS if c not in schema.names]
            if missing:
                raise ValueError(f"posterior.calibration {path}: {name} has no column(s) {', '.join(missing)} "
                                 "(a labelled output of this tool with label_correct)")
            handle.seek(0)
            columns = list(CALIBRATION_COLUMNS) + (["data_source"] if "data_source" in schema.names else [])
            tables.append(pq.read_table(handle, columns=columns))
    reward_model = None
    if fs.exists(f"{root}/manifest.json"):
        with fs.open(f"{root}/manifest.json", "r") as handle:
            reward_model = json.load(handle).get("reward_model")
    return pa.concat_tables(tables, promote_options="default"), reward_model


def observed(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, RM score) per row as float64, NaN where the row has no verdict / no score."""
    def where(column: str, status: str, statuses) -> np.ndarray:
        values = pc.fill_null(table.column(column).cast(pa.float64()), np.nan).to_numpy()
        valid = pc.fill_null(pc.is_in(table.column(status), pa.array(statuses)), False)
        return np.where(valid.to_numpy(zero_copy_only=False), values, np.nan)

    return (where("verifier_score", "verifier_status", VERDICT_STATUSES),
            where("rm_score", "rm_status", SCORED_STATUSES))


def usable(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(label, verdict, score, data_source) of the rows with a label, a verdict and an RM score."""
    verdict, score = observed(table)
    keep = pc.is_valid(table.column(LABEL)).to_numpy(zero_copy_only=False) & ~np.isnan(verdict) & ~np.isnan(score)
    sources = (table.column("data_source").to_pylist() if "data_source" in table.schema.names
               else [None] * table.num_rows)
    return (table.column(LABEL).to_numpy(zero_copy_only=False)[keep].astype(bool), verdict[keep], score[keep],
            np.array([POOLED if s is None else str(s) for s in sources], dtype=object)[keep])


def calibrate(table: pa.Table, per_source: bool, where: str) -> dict[str, Calibration]:
    """The pooled fit, and with per_source each data_source's with enough rows of both classes."""
    label, verdict, score, sources = usable(table)
    fits = {POOLED: fit(label, verdict, score, where)}
    if per_source:
        for source in sorted(set(sources) - {POOLED}):
            rows = sources == source
            if min(int(label[rows].sum()), int((~label[rows]).sum())) >= MIN_PER_CLASS:
                fits[source] = fit(label[rows], verdict[rows], score[rows], f"{where} (data_source {source})")
    return fits


@functools.lru_cache(maxsize=8)
def calibrated(path: str, per_source: bool) -> tuple[dict[str, Calibration], dict | None]:
    """The fits of a calibration output and its reward model, read once per process (configs are rebuilt
    several times while a run is planned)."""
    table, reward_model = read_calibration(path)
    return calibrate(table, per_source, path), reward_model


class PosteriorFusion(Fusion):
    """posterior_reward = P(c | v, s); its advantage per group as the plain modes' (HERO's normalization)."""

    name = "posterior"
    reward_column = "posterior_reward"
    title = "the probability of a correct response given the verdict and the RM score, calibrated on labelled data"
    fields = (pa.field("group_size", pa.int32()), pa.field("posterior_reward", pa.float64()),
              pa.field("advantage", pa.float64()), pa.field("posterior_status", pa.string()))
    statuses = {"posterior_status": POSTERIOR_STATUSES}
    column_notes = {
        "group_size": "responses of the prompt",
        "posterior_reward": "P(correct | verdict, RM score), calibrated (manifest: posterior)",
        "advantage": "posterior_reward normalized in its group, per --advantage-mode",
        "posterior_status": "ok (verdict and score), rm_missing (verdict and the base rate), no_verdict (score "
                            "alone), prior (neither: the base rate)",
    }

    def __init__(self, settings, rm_scores: bool):
        super().__init__(settings, rm_scores)
        config: PosteriorConfig = settings["posterior"]
        if not rm_scores:
            raise ValueError("pipeline.fusion posterior needs reward-model scores; this run has rm.backend none")
        if not config.calibration:
            raise ValueError("pipeline.fusion posterior needs posterior.calibration: a labelled output to fit on")
        self.fits, self.calibration_reward_model = calibrated(config.calibration, config.per_source)
        self.hero = settings["hero"]

    def check_reward_model(self, identity: dict) -> None:
        """Raises when the calibration output's reward model is not this run's (its scores mean something else);
        the backend that ran it (transformers, vLLM) may differ."""
        def model(found: dict) -> dict:
            return {k: v for k, v in found.items() if k != "backend"} if found.get("backend") != "precomputed" else found

        if self.calibration_reward_model is not None and model(self.calibration_reward_model) != model(identity):
            raise ValueError(f"posterior.calibration was scored by another reward model "
                             f"({self.calibration_reward_model}) than this run's ({identity})")

    def fuse(self, table: pa.Table, statistic) -> pa.Table:
        table, starts, sizes, group_of_row = group_segments(table)
        n = table.num_rows
        verdict, score = observed(table)
        logit = np.zeros(n)
        sources = (np.array([POOLED if s is None else s for s in table.column("data_source").to_pylist()], object)
                   if len(self.fits) > 1 and "data_source" in table.schema.names else np.full(n, POOLED, dtype=object))
        for source in set(sources.tolist()):
            rows = sources == source
            logit[rows] = self.fits.get(source, self.fits[POOLED]).logit(verdict[rows], score[rows])
        reward = sigmoid(logit)
        status = np.where(np.isnan(verdict), np.where(np.isnan(score), "prior", "no_verdict"),
                          np.where(np.isnan(score), "rm_missing", "ok"))
        advantage = group_advantage(reward, np.ones(n, dtype=bool), starts, np.maximum(sizes, 1), group_of_row,
                                    self.hero.eps, self.hero.advantage_mode)
        columns = [pa.array(sizes[group_of_row].astype(np.int32), pa.int32()), pa.array(reward, pa.float64()),
                   pa.array(advantage, pa.float64()), pa.array(status.tolist(), pa.string())]
        for spec, column in zip(self.fields, columns):
            table = table.append_column(spec, column)
        return table

    def shard_metadata(self, statistic) -> dict:
        return {"posterior": {source: fit.as_dict() for source, fit in self.fits.items()}}

    def manifest(self, shard_metadata: dict) -> dict:
        return {"posterior": shard_metadata.get("posterior")}
