"""An independent, deliberately plain implementation of docs/HERO.md, used to check transforms/fuse/hero.py.

One Python loop per group, statistics from the standard library; nothing shared with the code under test.
"""

from __future__ import annotations

import math
from collections import defaultdict


def pstdev(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def hero_reference(rows, alpha=0.1, beta=0.1, eps=1e-6, w_min=0.4, w_max=3.0, k=6.0, sigma_bar=None,
                   advantage_mode="grpo"):
    """rows: dicts with prompt_id, verifier_score (None/0/1), rm_score. Returns {row index: expected values}.

    Every group is assumed to have a reference and complete scores.
    """
    groups = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["prompt_id"]].append(i)
    sigmas = {pid: pstdev([rows[i]["rm_score"] for i in idx]) for pid, idx in groups.items()}
    if sigma_bar is None:
        eligible = [sigmas[pid] for pid, idx in groups.items() if len(idx) >= 2]
        sigma_bar = sum(eligible) / len(eligible) if eligible else 0.0
    expected = {}
    for pid, idx in groups.items():
        r_hat = {}
        for label in (0, 1):
            members = [i for i in idx if (rows[i]["verifier_score"] or 0) == label]
            if not members:
                continue
            scores = [rows[i]["rm_score"] for i in members]
            lo, hi = min(scores), max(scores)
            for i in members:
                x = (rows[i]["rm_score"] - lo) / (hi - lo + eps)
                r_hat[i] = (1 - beta) + 2 * beta * x if label == 1 else -alpha + 2 * alpha * x
        w = w_min + (w_max - w_min) / (1 + math.exp(-k * (sigmas[pid] - sigma_bar)))
        values = [r_hat[i] for i in idx]
        mean = sum(values) / len(values)
        std = pstdev(values)
        for i in idx:
            centered = r_hat[i] - mean
            advantage = w * centered / (std + eps) if advantage_mode == "grpo" else w * centered
            expected[i] = {"group_size": len(idx), "group_rm_std": sigmas[pid], "hero_normalized": r_hat[i],
                           "difficulty_weight": w, "hero_reward": w * r_hat[i], "advantage": advantage}
    return expected, sigma_bar
