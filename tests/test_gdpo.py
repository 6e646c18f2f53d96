"""GDPO fusion: hand-checked groups, edge cases, a plain-Python reference under hypothesis, and a whole run."""

from __future__ import annotations

import json
import math
from pathlib import Path
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import label, shared_file
from pipeline.config import ConfigError, build_config
from schemas.rollouts import ORDER
from transforms.fuse.gdpo import GdpoConfig, GdpoFusion
from transforms.rm import RewardModelConfig
from transforms.rm.signals import RewardSignal


def scored_table(prompt_ids, verifier_scores, signals: dict[str, list]) -> pa.Table:
    """Rows after verify and score; `signals` maps a reward signal's name to its scores (None: missing)."""
    columns = {"prompt_id": pa.array(prompt_ids, pa.string()), ORDER: pa.array(range(len(prompt_ids)), pa.int64()),
               "verifier_score": pa.array(verifier_scores, pa.float32())}
    for name, scores in signals.items():
        columns[f"rm_score__{name}"] = pa.array(scores, pa.float32())
    return pa.table(columns)


def fusion(names, eps=1e-6, weights="") -> GdpoFusion:
    signals = tuple(RewardSignal(n, RewardModelConfig(backend="precomputed", score_column=n)) for n in names)
    return GdpoFusion({"gdpo": GdpoConfig(eps=eps, weights=weights), "rm_signals": signals}, rm_scores=True)


def reference(prompt_ids, verifier_scores, signals: dict[str, list], eps, weights) -> dict:
    """GDPO row by row in plain Python: statistics.stdev (ddof 1) per group, 0 for a group of one, a null
    verdict as 0, a group with a missing RM score all None. Returns column -> values in input order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(p, []).append(i)
    components = {"verifier": [0.0 if v is None else float(v) for v in verifier_scores],
                  **{n: [None if s is None else float(np.float32(s)) for s in v] for n, v in signals.items()}}
    out = {f"gdpo_adv__{n}": [None] * len(prompt_ids) for n in components}
    out["gdpo_advantage"] = [None] * len(prompt_ids)
    for rows in groups.values():
        if any(components[n][i] is None for n in signals for i in rows):
            continue
        total = [0.0] * len(rows)
        for name, values in components.items():
            r = [values[i] for i in rows]
            if len(r) == 1:
                a = [0.0]
            else:
                mean, std = statistics.fmean(r), statistics.stdev(r)
                a = [(x - mean) / (std + eps) for x in r]
            for j, i in enumerate(rows):
                out[f"gdpo_adv__{name}"][i] = a[j]
                total[j] += weights.get(name, 1.0) * a[j]
        for j, i in enumerate(rows):
            out["gdpo_advantage"][i] = total[j]
    return out


def by_order(table: pa.Table, name: str) -> list:
    order = table.column(ORDER).to_pylist()
    values = table.column(name).to_pylist()
    result = [None] * len(order)
    for o, v in zip(order, values):
        result[o] = v
    return result


def test_two_components_by_hand():
    # verifier (1, 0, 0): mean 1/3, sample std sqrt(1/3); RM (1, 2, 3): mean 2, sample std 1.
    table = scored_table(["p"] * 3, [1.0, 0.0, 0.0], {"a": [1.0, 2.0, 3.0]})
    out = fusion(["a"], weights="verifier=2").fuse(table, None)
    s = math.sqrt(1 / 3)
    verifier = [(2 / 3) / (s + 1e-6), (-1 / 3) / (s + 1e-6), (-1 / 3) / (s + 1e-6)]
    rm = [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6)]
    assert by_order(out, "gdpo_adv__verifier") == pytest.approx(verifier, abs=1e-12)
    assert by_order(out, "gdpo_adv__a") == pytest.approx(rm, abs=1e-12)
    assert by_order(out, "gdpo_advantage") == pytest.approx([2 * v + r for v, r in zip(verifier, rm)], abs=1e-12)
    assert by_order(out, "advantage") == by_order(out, "gdpo_advantage")
    assert by_order(out, "group_size") == [3, 3, 3] and by_order(out, "gdpo_status") == ["ok"] * 3


EDGE_CASES = [
    # a group of one: every component's advantage is 0
    (["solo"], [1.0], {"a": [5.0]}, {"gdpo_adv__verifier": [0.0], "gdpo_adv__a": [0.0], "gdpo_status": ["ok"]}),
    # a component equal across the group (all correct): its advantage is 0, not NaN
    (["p", "p"], [1.0, 1.0], {"a": [1.0, 3.0]}, {"gdpo_adv__verifier": [0.0, 0.0]}),
    # a null verdict (timeout) counts as 0, as in HERO: (0, 1) has deviations -/+0.5, sample std sqrt(0.5)
    (["p", "p"], [None, 1.0], {"a": [1.0, 1.0]}, {"gdpo_adv__verifier": [-0.5 / (math.sqrt(0.5) + 1e-6),
                                                                         0.5 / (math.sqrt(0.5) + 1e-6)]}),
    # a rollout without an RM score: its whole group is null and rm_missing; the other group is untouched
    (["p", "p", "q", "q"], [1.0, 0.0, 1.0, 0.0], {"a": [None, 1.0, 2.0, 2.0]},
     {"gdpo_advantage": [None, None, 0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6)],
      "gdpo_status": ["rm_missing", "rm_missing", "ok", "ok"]}),
]


@pytest.mark.parametrize("prompt_ids,verdicts,signals,expected", EDGE_CASES)
def test_edge_cases(prompt_ids, verdicts, signals, expected):
    out = fusion(list(signals)).fuse(scored_table(prompt_ids, verdicts, signals), None)
    for name, values in expected.items():
        got = by_order(out, name)
        assert got == [pytest.approx(v) if isinstance(v, float) else v for v in values], name


group_strategy = st.lists(st.tuples(
    st.sampled_from([1.0, 0.0, None]),
    st.one_of(st.none(), st.floats(-50, 50, allow_nan=False)),
    st.floats(-50, 50, allow_nan=False)), min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(groups=st.lists(group_strategy, min_size=1, max_size=6),
       eps=st.sampled_from([1e-6, 1e-4]), w=st.floats(-3, 3, allow_nan=False))
def test_matches_the_plain_python_reference(groups, eps, w):
    prompt_ids, verdicts, a, b = [], [], [], []
    for g, rows in enumerate(groups):
        for verdict, score_a, score_b in rows:
            prompt_ids.append(f"g{g:02d}")
            verdicts.append(verdict)
            a.append(score_a)
            b.append(score_b)
    signals = {"a": a, "b": b}
    weights = {"b": w}
    out = fusion(["a", "b"], eps=eps, weights=f"b={w!r}").fuse(scored_table(prompt_ids, verdicts, signals), None)
    expected = reference(prompt_ids, verdicts, signals, eps, weights)
    for name, values in expected.items():
        got = by_order(out, name)
        for g, e in zip(got, values):
            assert (g is None) == (e is None), name
            if e is not None:
                assert g == pytest.approx(e, abs=1e-9, rel=1e-9), name


BAD_OPTIONS = [
    # a weight for a component the run does not have
    ({"rm_score_column": "s", "gdpo_weights": "rm=1,judge=2"}, "--gdpo-weights names judge"),
    # with one unnamed model the RM component is `rm`, not the column's name
    ({"rm_score_column": "s", "gdpo_weights": "s=1"}, "--gdpo-weights names s"),
    ({"rm_score_column": "s", "gdpo_weights": "rm:1"}, "--gdpo-weights must look like NAME=W"),
    ({"rm_score_column": "s", "gdpo_weights": "rm=1,rm=2"}, "twice"),
    ({"rm_score_column": "s", "gdpo_eps": 0.0}, "--gdpo-eps must be a number > 0"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS)
def test_bad_gdpo_options_fail_before_any_data_moves(options, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"input": "in", "output": "out", "fusion": "gdpo", **options})


def test_gdpo_settings_are_stored_only_in_gdpo_runs():
    hero = build_config({"input": "in", "output": "out", "rm_score_column": "s"})
    gdpo = build_config({"input": "in", "output": "out", "rm_score_column": "s", "fusion": "gdpo"})
    assert "gdpo" not in hero.labeling_dict()
    assert gdpo.labeling_dict()["gdpo"] == {"eps": 1e-6, "weights": ""}


@pytest.mark.slow
def test_a_gdpo_run_on_real_scores(tmp_path):
    """The shared qwen25 file (a real RM's scores): the output's advantage is GDPO's, checked against the
    reference on every group, and pairs rank by it."""
    manifest = label(shared_file("qwen25_math_cot100.parquet"), tmp_path / "out", rm_score_column="qwen_rm_score",
                     fusion="gdpo", pairs=True)
    assert manifest["fusion"]["reward_column"] == "gdpo_advantage"
    assert manifest["gdpo"]["components"] == {"verifier": "verifier_score", "rm": "rm_score"}
    table = pq.read_table(tmp_path / "out" / "data")
    expected = reference(table.column("prompt_id").to_pylist(), table.column("verifier_score").to_pylist(),
                         {"rm": table.column("rm_score").to_pylist()}, 1e-6, {})
    got = table.column("advantage").to_pylist()
    assert got == pytest.approx(expected["gdpo_advantage"], abs=1e-9)
    assert set(table.column("gdpo_status").to_pylist()) == {"ok"}
    assert manifest["pairs"]["rows"] > 0


VERL_FIXTURE = Path(__file__).parent / "fixtures" / "verl_gdpo.json"


def verl_whiten(values: np.ndarray) -> np.ndarray:
    """verl's masked_whiten over a batch (every row in the mask): unbiased variance, 1e-8 inside the root."""
    mean = values.mean()
    variance = ((values - mean) ** 2).mean() * len(values) / (len(values) - 1)
    return (values - mean) / np.sqrt(variance + 1e-8)


@pytest.mark.parametrize("case", json.loads(VERL_FIXTURE.read_text())["cases"], ids=lambda case: case["name"])
def test_gdpo_advantage_equals_verls_own_after_its_batch_whitening(case):
    """verl 0.9.1's compute_gdpo_outcome_advantage on these groups (recorded by
    benchmarks/verl_gdpo_crosscheck.py in a separate environment), against our gdpo_advantage with the same
    batch whitening; no singleton groups (verl gives them r / (1 + eps), we give 0)."""
    rows, weights = case["rows"], case["weights"]
    names = [n for n in weights if n != "verifier"]
    prompt_ids = [r["prompt_id"] for r in rows]
    table = scored_table(prompt_ids, [r["verifier"] for r in rows], {n: [r[n] for r in rows] for n in names})
    spec = ",".join(f"{n}={w}" for n, w in weights.items())
    if names == ["rm"]:  # one unnamed reward model: its component is `rm`, read from rm_score
        table = table.rename_columns([c if c != "rm_score__rm" else "rm_score" for c in table.column_names])
        ours = GdpoFusion({"gdpo": GdpoConfig(eps=case["eps"], weights=spec), "rm_signals": ()}, rm_scores=True)
    else:
        ours = fusion(names, eps=case["eps"], weights=spec)
    advantage = np.array(by_order(ours.fuse(table, None), "gdpo_advantage"))
    assert min(prompt_ids.count(p) for p in prompt_ids) > 1
    assert verl_whiten(advantage) == pytest.approx(case["verl_advantage"], abs=1e-5)
    assert np.std(case["verl_advantage"]) > 0.5  # a real spread of advantages, not a degenerate batch
