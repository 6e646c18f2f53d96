"""HERO fusion: small hand-checked tables, edge cases from docs/HERO.md, and property tests."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero_reference import hero_reference
from schemas.rollouts import ORDER
from transforms.fuse.hero import HeroConfig, fuse, sigma_partial


def scored_table(prompt_ids, verifier_scores, rm_scores, verifier_statuses=None, rm_statuses=None) -> pa.Table:
    n = len(prompt_ids)
    return pa.table({
        "prompt_id": pa.array(prompt_ids, pa.string()),
        ORDER: pa.array(range(n), pa.int64()),
        "verifier_score": pa.array(verifier_scores, pa.float32()),
        "verifier_status": verifier_statuses or ["ok" if v is not None else "timeout" for v in verifier_scores],
        "rm_score": pa.array(rm_scores, pa.float32()),
        "rm_status": rm_statuses or ["ok" if s is not None else "missing" for s in rm_scores],
    })


def column(table, name):
    return table.column(name).to_pylist()


def test_three_rollouts_by_hand():
    # Two correct (scores 1 and 3), one incorrect (score 2): alpha = beta = 0.1, eps = 1e-6.
    table = scored_table(["p", "p", "p"], [1.0, 1.0, 0.0], [1.0, 3.0, 2.0])
    sigma = float(np.std([1.0, 3.0, 2.0]))
    out = fuse(table, HeroConfig(), sigma_bar=sigma)
    r_hat = column(out, "hero_normalized")
    assert r_hat[0] == pytest.approx(0.9)  # bottom of the correct band
    assert r_hat[1] == pytest.approx(1.1, abs=1e-6)  # top of the correct band (minus eps effect)
    assert r_hat[2] == pytest.approx(-0.1)  # a single incorrect rollout sits at the bottom of its band
    # sigma_u == sigma_bar -> sigmoid(0) = 0.5 -> w = 0.4 + 2.6 / 2
    assert column(out, "difficulty_weight") == pytest.approx([1.7] * 3)
    assert column(out, "hero_reward") == pytest.approx([1.7 * r for r in r_hat])
    assert column(out, "group_rm_std") == pytest.approx([sigma] * 3)
    mean, std = np.mean(r_hat), np.std(r_hat)
    assert column(out, "advantage") == pytest.approx([1.7 * (r - mean) / (std + 1e-6) for r in r_hat])
    assert column(out, "hero_status") == ["ok"] * 3


def test_group_of_one():
    # HERO.md: sigma_u = 0, r_hat at the bottom of its band, advantage 0.
    out = fuse(scored_table(["solo"], [1.0], [5.0]), HeroConfig(), sigma_bar=0.5)
    assert column(out, "group_size") == [1]
    assert column(out, "group_rm_std") == [0.0]
    assert column(out, "hero_normalized") == pytest.approx([0.9])
    assert column(out, "advantage") == [0.0]


def test_tied_scores_middle_option():
    table = scored_table(["p"] * 4, [1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 1.0, 1.0])
    bottom = fuse(table, HeroConfig(), sigma_bar=0.5)
    middle = fuse(table, HeroConfig(tie_placement="middle"), sigma_bar=0.5)
    assert column(bottom, "hero_normalized") == pytest.approx([0.9, 0.9, -0.1, -0.1])
    assert column(middle, "hero_normalized") == pytest.approx([1.0, 1.0, 0.0, 0.0])


def test_timeout_counts_as_incorrect_but_keeps_its_status():
    table = scored_table(["p", "p"], [None, 1.0], [9.0, 0.0], verifier_statuses=["timeout", "ok"])
    out = fuse(table, HeroConfig(), sigma_bar=1.0)
    assert column(out, "verifier_status") == ["timeout", "ok"]
    # The timed-out rollout is stratified as r_rule = 0 even though its RM score is far higher.
    assert column(out, "hero_normalized") == pytest.approx([-0.1, 0.9])


def test_groups_without_usable_reference_or_score_are_null():
    table = scored_table(
        ["a", "a", "b", "b", "c", "c"],
        [None, None, None, None, 1.0, 0.0],
        [1.0, 2.0, 1.0, 2.0, 1.0, None],
        verifier_statuses=["no_reference", "no_reference", "bad_reference", "bad_reference", "ok", "ok"],
    )
    out = fuse(table, HeroConfig(), sigma_bar=0.5)
    assert column(out, "hero_status") == ["no_reference"] * 2 + ["bad_reference"] * 2 + ["rm_missing"] * 2
    for name in ("hero_normalized", "difficulty_weight", "hero_reward", "advantage"):
        assert column(out, name) == [None] * 6
    # sigma_u is still reported where every score exists.
    assert column(out, "group_rm_std") == [0.5, 0.5, 0.5, 0.5, None, None]


def test_rm_only_fallback_spans_both_bands():
    table = scored_table(["a", "a", "a"], [None] * 3, [0.0, 1.0, 2.0], verifier_statuses=["no_reference"] * 3)
    out = fuse(table, HeroConfig(on_bad_reference="rm_only"), sigma_bar=0.5)
    assert column(out, "hero_status") == ["rm_only"] * 3
    assert column(out, "hero_normalized") == pytest.approx([-0.1, 0.5, 1.1], abs=1e-5)


def test_backend_none_leaves_hero_null():
    table = scored_table(["a", "a"], [1.0, 0.0], [None, None], rm_statuses=["skipped", "skipped"])
    out = fuse(table, HeroConfig(), sigma_bar=None)
    assert column(out, "hero_status") == ["rm_disabled"] * 2
    assert column(out, "hero_reward") == [None, None]
    assert column(out, "group_size") == [2, 2]


def test_mean_only_advantage():
    table = scored_table(["p"] * 3, [1.0, 0.0, 0.0], [3.0, 1.0, 2.0])
    out = fuse(table, HeroConfig(advantage_mode="mean-only"), sigma_bar=0.0)
    r_hat, w = column(out, "hero_normalized"), column(out, "difficulty_weight")[0]
    assert column(out, "advantage") == pytest.approx([w * (r - np.mean(r_hat)) for r in r_hat])


def test_sigma_partial_skips_singletons_and_incomplete_groups():
    table = scored_table(["a", "a", "b", "c", "c"], [1.0] * 5, [0.0, 2.0, 7.0, 1.0, None])
    assert sigma_partial(table) == (1.0, 1)  # only group "a" (std of 0, 2 = 1)


def test_output_sorted_by_group_then_input_order():
    table = scored_table(["b", "a", "b", "a"], [1.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0])
    out = fuse(table, HeroConfig(), sigma_bar=0.1)
    assert column(out, "prompt_id") == ["a", "a", "b", "b"]
    assert column(out, ORDER) == [1, 3, 0, 2]


@pytest.mark.parametrize("kwargs,message", [
    ({"alpha": 0.5, "beta": 0.5}, "alpha \\+ hero.beta must be < 1"),  # bands would touch
    ({"alpha": -0.1}, "hero.alpha"),
    ({"eps": 0}, "hero.eps"),
    ({"w_min": 2.0, "w_max": 1.0}, "hero.w_min"),
    ({"k": float("nan")}, "hero.k"),
    ({"sigma_bar": -1.0}, "hero.sigma_bar"),
    ({"tie_placement": "top"}, "hero.tie_placement"),
    ({"advantage_mode": "ppo"}, "hero.advantage_mode"),
    ({"on_bad_reference": "drop"}, "hero.on_bad_reference"),
])
def test_invalid_hero_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeroConfig(**kwargs)


# ---- property tests -------------------------------------------------------------------------------

groups_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from([0.0, 1.0, None]), st.floats(-50, 50, allow_nan=False, width=32)),
             min_size=1, max_size=12),
    min_size=1, max_size=6,
)
band_strategy = st.tuples(st.floats(0.0, 0.45), st.floats(0.0, 0.45))


def _flatten(groups):
    ids, verdicts, scores = [], [], []
    for g, rows in enumerate(groups):
        for verdict, score in rows:
            ids.append(f"g{g}")
            verdicts.append(verdict)
            scores.append(score)
    return scored_table(ids, verdicts, scores)


@settings(max_examples=200, deadline=None)
@given(groups=groups_strategy, bands=band_strategy, sigma_bar=st.floats(0, 20))
def test_correct_outranks_incorrect_and_values_stay_in_bands(groups, bands, sigma_bar):
    alpha, beta = bands
    config = HeroConfig(alpha=alpha, beta=beta)
    out = fuse(_flatten(groups), config, sigma_bar=sigma_bar)
    ids, r_hat = column(out, "prompt_id"), column(out, "hero_normalized")
    correct = [v == 1.0 for v in column(out, "verifier_score")]
    weights = column(out, "difficulty_weight")
    rewards = column(out, "hero_reward")
    for gid in set(ids):
        rows = [i for i, x in enumerate(ids) if x == gid]
        good = [r_hat[i] for i in rows if correct[i]]
        bad = [r_hat[i] for i in rows if not correct[i]]
        if good and bad:
            assert min(good) > max(bad)
            assert min(rewards[i] for i in rows if correct[i]) > max(rewards[i] for i in rows if not correct[i])
    for i, value in enumerate(r_hat):
        lo, hi = ((1 - beta, 1 + beta) if correct[i] else (-alpha, alpha))
        assert lo - 1e-12 <= value <= hi + 1e-12
        assert config.w_min <= weights[i] <= config.w_max


@settings(max_examples=100, deadline=None)
@given(groups=groups_strategy, mode=st.sampled_from(["grpo", "mean-only"]))
def test_matches_independent_implementation(groups, mode):
    table = _flatten(groups)
    total, count = sigma_partial(table)
    sigma_bar = total / count if count else 0.0
    out = fuse(table, HeroConfig(advantage_mode=mode), sigma_bar=sigma_bar)
    rows = table.to_pylist()
    expected, expected_sigma_bar = hero_reference(rows, advantage_mode=mode)
    assert sigma_bar == pytest.approx(expected_sigma_bar, abs=1e-9)
    by_order = {o: i for i, o in enumerate(column(out, ORDER))}
    for i, values in expected.items():
        j = by_order[i]
        for name, value in values.items():
            got = out.column(name)[j].as_py()
            assert math.isclose(got, value, rel_tol=1e-7, abs_tol=1e-7), (name, got, value)


@settings(max_examples=50, deadline=None)
@given(groups=groups_strategy)
def test_every_row_accounted_for(groups):
    table = _flatten(groups)
    out = fuse(table, HeroConfig(), sigma_bar=1.0)
    assert sorted(column(out, ORDER)) == list(range(table.num_rows))
    sizes = dict(zip(column(out, "prompt_id"), column(out, "group_size")))
    assert sum(sizes.values()) == table.num_rows
