"""The fusion menu: plain verifier and rm modes, an RM ensemble (mean, min, uwo), and `herolabel fuse`.

Each mode against a plain-Python reference (hand cases and hypothesis, 1e-9 in float64); whole runs whose
data/ and pairs/ `herolabel fuse` must reproduce byte for byte, on every engine for the ensemble's passes.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ENGINE_NAMES, label, shared_file
from pipeline.config import ConfigError, build_config
from pipeline.fuse_output import fuse_output
from pipeline.storage.fsio import read_file_metadata
from run_pipeline import main
from schemas.rollouts import ORDER
from transforms.fuse.ensemble import EnsembleConfig, EnsembleFusion
from transforms.fuse.hero import HeroConfig
from transforms.fuse.plain import RmFusion, VerifierFusion
from transforms.rm import RewardModelConfig
from transforms.rm.signals import RewardSignal

EPS = 1e-6


def scored(prompt_ids, verdicts, scores, verifier_status=None, rm_status=None, **signals) -> pa.Table:
    """Rows after verify and score (in input order: ORDER is the position)."""
    n = len(prompt_ids)
    columns = {"prompt_id": pa.array(prompt_ids, pa.string()), ORDER: pa.array(range(n), pa.int64()),
               "verifier_score": pa.array(verdicts, pa.float32()),
               "verifier_status": pa.array(verifier_status or ["ok"] * n, pa.string()),
               "rm_score": pa.array(scores, pa.float32()),
               "rm_status": pa.array(rm_status or ["ok" if s is not None else "missing" for s in scores], pa.string())}
    for name, (values, statuses) in signals.items():
        columns[f"rm_score__{name}"] = pa.array(values, pa.float32())
        columns[f"rm_status__{name}"] = pa.array(statuses, pa.string())
    return pa.table(columns)


def in_input_order(table: pa.Table, name: str) -> list:
    out = [None] * table.num_rows
    for position, value in zip(table.column(ORDER).to_pylist(), table.column(name).to_pylist()):
        out[position] = value
    return out


def advantage_reference(rewards: list[float], mode: str = "grpo") -> list[float]:
    """HERO's advantage (docs/HERO.md) in plain Python: population std, eps added."""
    mean = statistics.fmean(rewards)
    if mode == "mean-only":
        return [r - mean for r in rewards]
    std = statistics.pstdev(rewards)
    return [(r - mean) / (std + EPS) for r in rewards]


def plain_reference(prompt_ids, verdicts, scores, verifier_status, mode, advantage_mode="grpo") -> dict:
    """verifier / rm rewards and advantages row by row: (reward, advantage, status) lists in input order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(p, []).append(i)
    reward, advantage, status = [None] * len(prompt_ids), [None] * len(prompt_ids), [None] * len(prompt_ids)
    for rows in groups.values():
        if mode == "verifier":
            found = {verifier_status[i] for i in rows}
            why = "no_reference" if "no_reference" in found else "bad_reference" if "bad_reference" in found else "ok"
            values = [0.0 if verdicts[i] is None else float(verdicts[i]) for i in rows]
        else:
            why = "rm_missing" if any(scores[i] is None for i in rows) else "ok"
            values = [0.0 if scores[i] is None else float(np.float32(scores[i])) for i in rows]
        for j, i in enumerate(rows):
            status[i] = why
        if why != "ok":
            continue
        for j, (i, a) in enumerate(zip(rows, advantage_reference(values, advantage_mode))):
            reward[i], advantage[i] = values[j], a
    return {"reward": reward, "advantage": advantage, "status": status}


def plain(mode: str, advantage_mode: str = "grpo"):
    cls = VerifierFusion if mode == "verifier" else RmFusion
    return cls({"hero": HeroConfig(advantage_mode=advantage_mode)}, rm_scores=True)


# --- plain modes -------------------------------------------------------------------------------------------

def test_verifier_mode_by_hand():
    # p: one correct of two -> rewards 1, 0, advantages +-0.5 / (0.5 + eps); q: a lone rollout -> advantage 0;
    # r: no gold answer -> null columns and its status; a null verdict (timeout) counts 0.
    table = scored(["p", "p", "q", "r", "r", "s", "s"], [1.0, 0.0, 1.0, None, None, None, 1.0],
                   [0.0] * 7, ["ok", "ok", "ok", "no_reference", "no_reference", "timeout", "ok"])
    out = plain("verifier").fuse(table, None)
    assert in_input_order(out, "verifier_reward") == [1.0, 0.0, 1.0, None, None, 0.0, 1.0]
    assert in_input_order(out, "advantage") == pytest.approx(
        [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), 0.0, None, None, -0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)])
    assert in_input_order(out, "verifier_reward_status") == ["ok", "ok", "ok", "no_reference", "no_reference",
                                                             "ok", "ok"]
    assert in_input_order(out, "group_size") == [2, 2, 1, 2, 2, 2, 2]


def test_rm_mode_by_hand():
    # p: scores 1 and 3 -> advantages -+1 / (1 + eps); q: a missing score nulls its group (rm_missing)
    table = scored(["p", "p", "q", "q"], [1.0, 0.0, 1.0, 0.0], [1.0, 3.0, None, 2.0])
    out = plain("rm").fuse(table, None)
    assert in_input_order(out, "rm_reward") == [1.0, 3.0, None, None]
    assert in_input_order(out, "advantage") == pytest.approx([-1 / (1 + EPS), 1 / (1 + EPS), None, None])
    assert in_input_order(out, "rm_reward_status") == ["ok", "ok", "rm_missing", "rm_missing"]
    mean_only = plain("rm", "mean-only").fuse(table, None)
    assert in_input_order(mean_only, "advantage")[:2] == [-1.0, 1.0]


plain_rows = st.lists(st.tuples(st.sampled_from([1.0, 0.0, None]),
                                st.one_of(st.none(), st.floats(-30, 30, allow_nan=False, width=32)),
                                st.sampled_from(["ok", "ok", "ok", "no_reference", "bad_reference", "timeout"])),
                      min_size=1, max_size=6)


@settings(max_examples=120, deadline=None)
@given(groups=st.lists(plain_rows, min_size=1, max_size=6), mode=st.sampled_from(["verifier", "rm"]),
       advantage_mode=st.sampled_from(["grpo", "mean-only"]))
def test_plain_modes_match_the_plain_python_reference(groups, mode, advantage_mode):
    prompt_ids = [f"g{g}" for g, rows in enumerate(groups) for _ in rows]
    verdicts = [v for rows in groups for v, _, _ in rows]
    scores = [s for rows in groups for _, s, _ in rows]
    statuses = [s for rows in groups for _, _, s in rows]
    out = plain(mode, advantage_mode).fuse(scored(prompt_ids, verdicts, scores, statuses), None)
    expected = plain_reference(prompt_ids, verdicts, scores, statuses, mode, advantage_mode)
    assert in_input_order(out, f"{mode}_reward") == pytest.approx(expected["reward"], abs=1e-9)
    assert in_input_order(out, "advantage") == pytest.approx(expected["advantage"], abs=1e-9)
    assert in_input_order(out, f"{mode}_reward_status") == expected["status"]


# --- the RM ensemble ---------------------------------------------------------------------------------------

SIGNALS = tuple(RewardSignal(n, RewardModelConfig(backend="precomputed", score_column=n)) for n in ("a", "b"))


def ensemble(mode: str, uwo_lambda: float = 0.5) -> EnsembleFusion:
    inner = RmFusion({"hero": HeroConfig(), "rm_signals": SIGNALS}, rm_scores=True)
    return EnsembleFusion(inner, EnsembleConfig(mode=mode, uwo_lambda=uwo_lambda), SIGNALS)


def ensemble_reference(members: dict[str, list], mode: str, uwo_lambda: float) -> list:
    """z-score each member over every row it scored (population std; std <= 1e-9 x max(1, |mean|): constant,
    z 0), then combine per row."""
    z = {}
    for name, values in members.items():
        scored_values = [float(np.float32(v)) for v in values if v is not None]
        mean, std = statistics.fmean(scored_values), statistics.pstdev(scored_values)
        constant = std <= 1e-9 * max(1.0, abs(mean))
        z[name] = [None if v is None else 0.0 if constant else (float(np.float32(v)) - mean) / std
                   for v in values]
    out = []
    for row in zip(*z.values()):
        if any(v is None for v in row):
            out.append(None)
        elif mode == "mean":
            out.append(statistics.fmean(row))
        elif mode == "min":
            out.append(min(row))
        else:
            out.append(statistics.fmean(row) - uwo_lambda * statistics.pvariance(row))
    return out


def run_ensemble(fusion: EnsembleFusion, buckets: list[pa.Table]):
    """The ensemble's passes as an engine runs them: partials per bucket, combined, then fuse per bucket."""
    from transforms.fuse import job_statistic

    statistic = job_statistic(fusion, lambda earlier: [fusion.partial(b, earlier) for b in buckets])
    return statistic, [fusion.fuse(b, statistic) for b in buckets]


member_rows = st.lists(st.tuples(st.one_of(st.none(), st.floats(-20, 20, allow_nan=False, width=32)),
                                 st.floats(-500, 500, allow_nan=False, width=32)), min_size=2, max_size=20)


@settings(max_examples=120, deadline=None)
@given(rows=member_rows, mode=st.sampled_from(["mean", "min", "uwo"]), uwo_lambda=st.floats(0, 2))
def test_ensemble_matches_the_plain_python_reference(rows, mode, uwo_lambda):
    a, b = [r[0] for r in rows], [r[1] for r in rows]
    if sum(v is not None for v in a) == 0:
        a[0] = 1.0
    n = len(rows)
    table = scored([f"g{i // 3}" for i in range(n)], [1.0] * n, [0.0] * n,
                   a=(a, ["ok" if v is not None else "missing" for v in a]), b=(b, ["ok"] * n))
    half = n // 2  # two buckets of whole groups (a group is 3 rows; the split may cut one, harmless here)
    statistic, fused = run_ensemble(ensemble(mode, uwo_lambda), [table.slice(0, half), table.slice(half)])
    got = {}
    for part in fused:
        got.update(zip(part.column(ORDER).to_pylist(), part.column("rm_score").to_pylist()))
    expected = ensemble_reference({"a": a, "b": b}, mode, uwo_lambda)
    # rm_score is float32: the reference's value rounded to float32 (within a float32 step of it)
    assert [got[i] for i in range(n)] == [None if x is None else pytest.approx(x, rel=1e-6, abs=1e-6)
                                          for x in expected]
    # The statistic is the same whatever order the buckets arrive in.
    assert run_ensemble(ensemble(mode, uwo_lambda), [table.slice(half), table.slice(0, half)])[0] == statistic


def test_ensemble_status_is_ok_only_where_every_member_is():
    # row 0: both ok; row 1: b truncated -> truncated (still scored); row 2: a missing -> no score, missing;
    # row 3: a error beats b missing -> error
    table = scored(["p"] * 4, [1.0] * 4, [0.0] * 4,
                   a=([1.0, 2.0, None, None], ["ok", "ok", "missing", "error"]),
                   b=([3.0, 5.0, 4.0, None], ["ok", "truncated", "ok", "missing"]))
    fusion = ensemble("mean")
    stats = {"a": (1.5, 0.5), "b": (4.0, 1.0)}
    out = fusion.with_ensemble(table, stats)
    assert out.column("rm_status").to_pylist() == ["ok", "truncated", "missing", "error"]
    assert out.column("rm_score").to_pylist() == pytest.approx([(-1 + -1) / 2, (1 + 1) / 2, None, None])


@pytest.mark.parametrize("options,message", [
    # an ensemble of one reward model
    ({"rm_score_column": "s", "rm_ensemble": "mean"}, "needs several reward signals"),
    # gdpo takes each signal on its own
    ({"rm_model": "a=column:x,b=column:y", "rm_ensemble": "min", "fusion": "gdpo"}, "does not apply to --fusion gdpo"),
    # a negative variance weight
    ({"rm_model": "a=column:x,b=column:y", "rm_ensemble": "uwo", "uwo_lambda": -1}, "--uwo-lambda"),
    # the rm mode without reward-model scores
    ({"rm_backend": "none", "fusion": "rm"}, "--fusion rm needs reward-model scores"),
])
def test_bad_menu_options_fail_before_any_data_moves(options, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"input": "in", "output": "out", **options})


def test_ensemble_settings_are_stored_only_in_ensemble_runs():
    plain_run = build_config({"input": "in", "output": "out", "rm_model": "a=column:x,b=column:y"})
    uwo = build_config({"input": "in", "output": "out", "rm_model": "a=column:x,b=column:y", "rm_ensemble": "uwo"})
    assert "ensemble" not in plain_run.labeling_dict()
    assert uwo.labeling_dict()["ensemble"] == {"mode": "uwo", "uwo_lambda": 0.5}


# --- whole runs and herolabel fuse -------------------------------------------------------------------------

def digests(output: Path, part: str = "data") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((output / part).glob("*.parquet"))}


@pytest.fixture(scope="module")
def two_signals(tmp_path_factory) -> Path:
    """The shared qwen25 file (a real RM's scores) with a second signal on another scale: 3 s + noise + 5."""
    table = pq.read_table(shared_file("qwen25_math_cot100.parquet"))
    noise = np.random.default_rng(0).normal(0, 2, table.num_rows)
    path = tmp_path_factory.mktemp("two_signals") / "rollouts.parquet"
    pq.write_table(table.append_column("s2", pa.array(3 * table.column("qwen_rm_score").to_numpy() + noise + 5)), path)
    return path


QWEN = {"rm_score_column": "qwen_rm_score", "rows_per_shard": 300, "pairs": True}
TWO = {"rm_model": "a=column:qwen_rm_score,b=column:s2", "rows_per_shard": 300, "pairs": True}


@pytest.mark.slow
def test_fuse_to_each_mode_equals_a_full_run_and_gdpo_returns_to_hero(tmp_path):
    source = shared_file("qwen25_math_cot100.parquet")
    hero = label(source, tmp_path / "hero", **QWEN)
    assert hero["sigma_bar"] > 0
    for mode in ("gdpo", "verifier", "rm"):
        full = label(source, tmp_path / f"full_{mode}", fusion=mode, **QWEN)
        fused = fuse_output(str(tmp_path / "hero"), str(tmp_path / f"fused_{mode}"), {"fusion": mode})
        assert digests(tmp_path / f"fused_{mode}") == digests(tmp_path / f"full_{mode}"), mode
        assert digests(tmp_path / f"fused_{mode}", "pairs") == digests(tmp_path / f"full_{mode}", "pairs"), mode
        assert fused["fusion"] == full["fusion"] and fused["status_counts"] == full["status_counts"]
        assert fused["fused_from"] == {"output": str(tmp_path / "hero"), "fusion": "hero"}
        assert fused["pairs"]["rows"] == full["pairs"]["rows"] > 0
        # the report and the card follow the mode: its reward per verifier class, its columns
        report = json.loads((tmp_path / f"fused_{mode}" / "run_report.json").read_text())
        reward = full["fusion"]["reward_column"]
        assert report["fusion"] == mode and report["reward_column"] == reward
        by_class = report["reward_by_verifier_class"]
        assert by_class["correct"]["mean"] > by_class["incorrect"]["mean"], mode
        assert by_class["correct"]["rows"] + by_class["incorrect"]["rows"] == 800
        assert f"`{reward}`" in (tmp_path / f"fused_{mode}" / "README.md").read_text()
        assert f"{reward} by verifier class" in (tmp_path / f"fused_{mode}" / "report.html").read_text()
    fuse_output(str(tmp_path / "fused_gdpo"), str(tmp_path / "back"), {"fusion": "hero"})
    assert digests(tmp_path / "back") == digests(tmp_path / "hero")
    assert digests(tmp_path / "back", "pairs") == digests(tmp_path / "hero", "pairs")
    back = pq.read_table(tmp_path / "back" / "data")
    assert back.schema.names == pq.read_table(tmp_path / "hero" / "data").schema.names


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_an_ensemble_run_equals_fusing_a_plain_run_on_every_engine(tmp_path, two_signals, engine):
    plain_run = label(two_signals, tmp_path / "plain", engine="beam", **TWO)
    assert plain_run["fusion_rm"] == "a"
    full = label(two_signals, tmp_path / "mean", engine=engine, rm_ensemble="mean", **TWO)
    fuse_output(str(tmp_path / "plain"), str(tmp_path / "fused"), {"rm_ensemble": "mean"})
    assert digests(tmp_path / "fused") == digests(tmp_path / "mean")
    assert digests(tmp_path / "fused", "pairs") == digests(tmp_path / "mean", "pairs")
    members = full["rm_ensemble"]["members"]
    table = pq.read_table(tmp_path / "mean" / "data")
    expected = ensemble_reference({"a": table.column("rm_score__a").to_pylist(),
                                   "b": table.column("rm_score__b").to_pylist()}, "mean", 0.5)
    assert table.column("rm_score").to_pylist() == pytest.approx(expected, abs=1e-6)
    assert members["b"]["mean"] > members["a"]["mean"] + 5 and members["b"]["std"] > 2 * members["a"]["std"]
    assert read_file_metadata(full["data_files"][0])["rm_ensemble"]["members"] == members


@pytest.mark.slow
def test_fuse_between_ensembles_modes_and_signals_through_the_command_line(tmp_path, two_signals):
    label(two_signals, tmp_path / "mean", rm_ensemble="mean", **TWO)
    label(two_signals, tmp_path / "uwo", rm_ensemble="uwo", uwo_lambda=0.25, **TWO)
    label(two_signals, tmp_path / "b", fusion_rm="b", **TWO)
    assert main(["fuse", str(tmp_path / "mean"), "--output", str(tmp_path / "to_uwo"), "--rm-ensemble", "uwo",
                 "--uwo-lambda", "0.25"]) == 0
    assert digests(tmp_path / "to_uwo") == digests(tmp_path / "uwo")
    assert main(["fuse", str(tmp_path / "mean"), "--output", str(tmp_path / "to_b"), "--rm-ensemble", "none",
                 "--fusion-rm", "b"]) == 0
    assert digests(tmp_path / "to_b") == digests(tmp_path / "b")
    # to gdpo (the ensemble does not apply there) and back to the mean ensemble: the original bytes
    assert main(["fuse", str(tmp_path / "mean"), "--output", str(tmp_path / "gdpo"), "--fusion", "gdpo"]) == 0
    assert main(["fuse", str(tmp_path / "gdpo"), "--output", str(tmp_path / "back"), "--fusion", "hero",
                 "--rm-ensemble", "mean"]) == 0
    assert digests(tmp_path / "back") == digests(tmp_path / "mean")


@pytest.mark.slow
def test_fuse_refuses_what_it_cannot_do(tmp_path, capsys):
    label(shared_file("qwen25_math_cot100.parquet"), tmp_path / "hero", rm_score_column="qwen_rm_score")
    # an option that changes verdicts or scores: argparse does not know it here
    with pytest.raises(SystemExit):
        main(["fuse", str(tmp_path / "hero"), "--output", str(tmp_path / "x"), "--rm-model", "m"])
    # a directory that is not a finished output
    assert main(["fuse", str(tmp_path / "nothing"), "--output", str(tmp_path / "y"), "--fusion", "gdpo"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    # the source itself as the output, even with --overwrite
    assert main(["fuse", str(tmp_path / "hero"), "--output", str(tmp_path / "hero"), "--fusion", "gdpo",
                 "--overwrite"]) == 2
    assert "is the output being fused" in capsys.readouterr().err
    # a non-empty output directory, unless --overwrite
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["fuse", str(tmp_path / "hero"), "--output", str(tmp_path / "taken"), "--fusion", "gdpo"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "taken" / "notes.txt").exists()
    # a bad value names the option
    assert main(["fuse", str(tmp_path / "hero"), "--output", str(tmp_path / "z"), "--gdpo-weights", "nope=1",
                 "--fusion", "gdpo"]) == 2
    assert "--gdpo-weights" in capsys.readouterr().err
    # an ensemble of a run with one reward model
    assert main(["fuse", str(tmp_path / "hero"), "--output", str(tmp_path / "w"), "--rm-ensemble", "mean"]) == 2
    assert "several reward signals" in capsys.readouterr().err


# --- posterior ---------------------------------------------------------------------------------------------

def synthetic(n: int, rho0: float, rho1: float, prior: float, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Rows from a known process: c ~ Bernoulli(prior); the RM score ~ N(+1, 1) if correct, N(-1, 1) if not;
    the verdict flips a correct answer to 0 with rho1 and an incorrect one to 1 with rho0, independently of
    the score. Returns the rows and the true P(c | v, s) of each."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < prior
    score = np.where(correct, 1.0, -1.0) + rng.normal(0, 1, n)
    verdict = np.where(correct, rng.random(n) >= rho1, rng.random(n) < rho0).astype(np.float64)
    # logit P(c | s) = log(prior / (1 - prior)) + 2 s for these two Gaussians; plus the verdict's likelihood ratio
    term = np.where(verdict == 1, np.log((1 - rho1) / rho0), np.log(rho1 / (1 - rho0)))
    truth = 1 / (1 + np.exp(-(np.log(prior / (1 - prior)) + 2 * score + term)))
    table = pa.table({"prompt_id": [f"p{i // 8}" for i in range(n)], ORDER: np.arange(n),
                      "label_correct": correct, "verifier_score": pa.array(verdict, pa.float32()),
                      "verifier_status": ["ok"] * n, "rm_score": pa.array(score, pa.float32()), "rm_status": ["ok"] * n})
    return table, truth


def log_loss(label: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def three_ways(fitted, label, verdict, score) -> dict[str, float]:
    """Log-loss of the posterior, of the RM alone and of the verifier alone, each a probability from the fit."""
    from transforms.fuse.posterior import sigmoid

    base = math.log(fitted.base_rate / (1 - fitted.base_rate))
    return {"posterior": log_loss(label, sigmoid(fitted.logit(verdict, score))),
            "rm": log_loss(label, sigmoid(fitted.intercept + fitted.slope * score)),
            "verifier": log_loss(label, sigmoid(base + fitted.verdict_term(verdict)))}


def test_posterior_recovers_a_known_process():
    from transforms.fuse.posterior import calibrate, sigmoid, usable

    calibration, _ = synthetic(40_000, rho0=0.1, rho1=0.2, prior=0.4, seed=1)
    fitted = calibrate(calibration, per_source=False, where="synthetic")["(all)"]
    assert abs(fitted.rho0 - 0.1) < 0.01 and abs(fitted.rho1 - 0.2) < 0.01
    held_out, truth = synthetic(20_000, rho0=0.1, rho1=0.2, prior=0.4, seed=2)
    label, verdict, score, _ = usable(held_out)
    posterior = sigmoid(fitted.logit(verdict, score))
    assert np.max(np.abs(posterior - truth)) < 0.02
    losses = three_ways(fitted, label.astype(float), verdict, score)
    assert losses["posterior"] < losses["verifier"] and losses["posterior"] < losses["rm"], losses


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([1.0, 0.0, None]), st.one_of(st.none(), st.floats(-8, 8, width=32))),
                     min_size=1, max_size=12),
       rho0=st.floats(0.01, 0.45), rho1=st.floats(0.01, 0.45), slope=st.floats(-3, 3), intercept=st.floats(-2, 2),
       base=st.floats(0.05, 0.95))
def test_posterior_matches_the_plain_python_reference(rows, rho0, rho1, slope, intercept, base):
    from transforms.fuse.posterior import Calibration, PosteriorFusion

    fusion = PosteriorFusion.__new__(PosteriorFusion)  # the fit given, not read from a calibration output
    fusion.fits = {"(all)": Calibration(rho0, rho1, intercept, slope, base, 100, 50)}
    fusion.hero = HeroConfig()
    verdicts, scores = [v for v, _ in rows], [s for _, s in rows]
    statuses = ["ok" if v is not None else "timeout" for v in verdicts]
    out = fusion.fuse(scored(["p"] * len(rows), verdicts, scores, statuses), None)
    expected = []
    for v, s in rows:
        logit = math.log(base / (1 - base)) if s is None else intercept + slope * float(np.float32(s))
        if v is not None:
            logit += math.log((1 - rho1) / rho0) if v == 1.0 else math.log(rho1 / (1 - rho0))
        expected.append(1 / (1 + math.exp(-logit)))
    assert in_input_order(out, "posterior_reward") == pytest.approx(expected, abs=1e-9)
    assert in_input_order(out, "advantage") == pytest.approx(advantage_reference(expected), abs=1e-9)
    assert in_input_order(out, "posterior_status") == [
        ("ok" if s is not None else "rm_missing") if v is not None else ("no_verdict" if s is not None else "prior")
        for v, s in rows]


@pytest.mark.slow
def test_posterior_on_the_shared_qwen25_file_two_fold_cross_fitted_by_prompt(tmp_path):
    """Real RM scores and labels (the verifier agrees with 799 of 800): fit on one half of the prompts,
    score the other, both ways; the posterior beats the RM alone and stays within 0.01 of the verifier."""
    from transforms.fuse.posterior import calibrate, usable

    label(shared_file("qwen25_math_cot100.parquet"), tmp_path / "out", rm_score_column="qwen_rm_score")
    table = pq.read_table(tmp_path / "out" / "data")
    prompts = sorted(set(table.column("prompt_id").to_pylist()))
    fold = {p: i % 2 for i, p in enumerate(prompts)}
    in_fold = np.array([fold[p] for p in table.column("prompt_id").to_pylist()])
    totals = {"posterior": 0.0, "rm": 0.0, "verifier": 0.0}
    for held in (0, 1):
        fitted = calibrate(table.filter(pa.array(in_fold != held)), per_source=False, where="fold")["(all)"]
        y, verdict, score, _ = usable(table.filter(pa.array(in_fold == held)))
        for name, loss in three_ways(fitted, y.astype(float), verdict, score).items():
            totals[name] += loss * len(y) / table.num_rows
    assert totals["posterior"] < totals["rm"], totals
    assert abs(totals["posterior"] - totals["verifier"]) <= 0.01, totals


@pytest.fixture(scope="module")
def qwen_halves(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The shared qwen25 file split by prompt into two halves, and the first half labelled (a calibration)."""
    base = tmp_path_factory.mktemp("halves")
    table = pq.read_table(shared_file("qwen25_math_cot100.parquet"))
    prompts = sorted(set(table.column("prompt_id").to_pylist()))
    first = pa.array([prompts.index(p) % 2 == 0 for p in table.column("prompt_id").to_pylist()])
    pq.write_table(table.filter(first), base / "first.parquet")
    pq.write_table(table.filter(pa.compute.invert(first)), base / "second.parquet")
    label(base / "first.parquet", base / "calibration", rm_score_column="qwen_rm_score")
    return base / "calibration", base / "second.parquet", base


@pytest.mark.slow
def test_a_posterior_run_calibrated_on_half_and_fused_from_hero(tmp_path, qwen_halves):
    calibration, second, _ = qwen_halves
    options = {"rm_score_column": "qwen_rm_score", "pairs": True, "rows_per_shard": 150}
    full = label(second, tmp_path / "posterior", fusion="posterior", calibration=str(calibration), **options)
    fit = full["posterior"]["(all)"]
    assert fit["rows"] == 400 and 0 < fit["rho0"] < 0.1 and 0 < fit["rho1"] < 0.1 and fit["slope"] > 0
    assert full["fusion"]["reward_column"] == "posterior_reward" and full["pairs"]["rows"] > 0
    table = pq.read_table(tmp_path / "posterior" / "data")
    y = table.column("label_correct").to_numpy(zero_copy_only=False)
    reward = table.column("posterior_reward").to_numpy()
    assert reward[y].min() > 0.5 > reward[~y].max() or log_loss(y.astype(float), reward) < 0.05
    label(second, tmp_path / "hero", **options)
    fuse_output(str(tmp_path / "hero"), str(tmp_path / "fused"), {"fusion": "posterior",
                                                                    "calibration": str(calibration)})
    assert digests(tmp_path / "fused") == digests(tmp_path / "posterior")
    assert digests(tmp_path / "fused", "pairs") == digests(tmp_path / "posterior", "pairs")
    # posterior keeps every column the others need: back to hero gives the hero run's bytes
    fuse_output(str(tmp_path / "posterior"), str(tmp_path / "back"), {"fusion": "hero"})
    assert digests(tmp_path / "back") == digests(tmp_path / "hero")


@pytest.mark.slow
def test_bad_calibrations_fail_before_any_data_moves(tmp_path, qwen_halves):
    calibration, second, base = qwen_halves
    # too few labelled rows of a class: the counts and the minimum are named
    few = pq.read_table(second).slice(0, 30)
    pq.write_table(few, tmp_path / "few.parquet")
    label(tmp_path / "few.parquet", tmp_path / "few", rm_score_column="qwen_rm_score")
    with pytest.raises(ConfigError, match=r"30 usable labelled rows .* at least 20 of each"):
        build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "posterior",
                      "calibration": str(tmp_path / "few")})
    # no calibration, one without label_correct, one that does not exist
    with pytest.raises(ConfigError, match="needs --calibration"):
        build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "posterior"})
    with pytest.raises(ConfigError, match="no column"):
        build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "posterior",
                      "calibration": str(second)})
    with pytest.raises(ConfigError, match="does not exist"):
        build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "posterior",
                      "calibration": str(tmp_path / "nowhere")})
    # a verifier no better than chance on the calibration: every verdict flipped
    flipped = pq.read_table(calibration / "data")
    flipped = flipped.set_column(flipped.schema.get_field_index("label_correct"), "label_correct",
                                 pa.compute.invert(flipped.column("label_correct")))
    (tmp_path / "flipped").mkdir()
    pq.write_table(flipped, tmp_path / "flipped" / "rows.parquet")
    with pytest.raises(ConfigError, match="no better than chance"):
        build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "posterior",
                      "calibration": str(tmp_path / "flipped")})
    # scores of another reward model than the calibration's: refused at planning, before any data moves
    renamed = pq.read_table(second)
    pq.write_table(renamed.append_column("other", renamed.column("qwen_rm_score")), tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match="another reward model"):
        label(tmp_path / "other.parquet", tmp_path / "refused", rm_score_column="other", fusion="posterior",
              calibration=str(calibration))
    assert not (tmp_path / "refused" / "data").exists()


@pytest.mark.slow
def test_fuse_copies_errors_and_keeps_groups_without_a_reference(tmp_path):
    """Bad rows (errors/), prompts without a reference and a duplicate row: fuse writes what a full run writes."""
    from pipeline.tools.demo import synthetic_rollouts

    table = synthetic_rollouts(400, seed=3, missing_reference_every=5, bad_rows=3)
    table = table.append_column("score", pa.array(np.random.default_rng(3).normal(0, 1, table.num_rows)))
    table = pa.concat_tables([table, table.slice(10, 1)])  # a later copy of row 10: errors/part-dup-*
    pq.write_table(table, tmp_path / "rollouts.parquet")
    options = {"rm_score_column": "score", "rows_per_shard": 100, "pairs": True, "max_error_rate": 0.5}
    source = label(tmp_path / "rollouts.parquet", tmp_path / "hero", **options)
    assert source["error_rows"] == 4 and source["status_counts"]["hero_status"]["no_reference"] > 0
    full = label(tmp_path / "rollouts.parquet", tmp_path / "verifier", fusion="verifier", **options)
    fused = fuse_output(str(tmp_path / "hero"), str(tmp_path / "fused"), {"fusion": "verifier"})
    for part in ("data", "pairs", "errors"):
        assert digests(tmp_path / "fused", part) == digests(tmp_path / "verifier", part), part
    assert fused["error_rows"] == full["error_rows"] == 4 and fused["accounted"]
    assert fused["status_counts"]["verifier_reward_status"] == full["status_counts"]["verifier_reward_status"]
    assert fused["rm_rows"] == {"scored": 0, "cached": 0}
