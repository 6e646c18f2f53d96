"""How far reward scores agree with the verifier and with each other: AUROC (Mann-Whitney, ties counted
half), Spearman's rank correlation, and the report's section per reward signal. Pure functions over numpy
arrays, each one sort of its rows (O(n log n))."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from transforms.rm.signals import SCORE_PREFIX


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values given their average rank; one sort (O(n log n))."""
    n = len(values)
    order = values.argsort(kind="mergesort")
    ordered = values[order]
    starts_run = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if n else np.array([], bool)
    starts = np.flatnonzero(starts_run)
    ends = np.concatenate([starts[1:], [n]])
    ranks = np.empty(n)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(starts_run) - 1]  # positions s..e-1 hold ranks s+1..e
    return ranks


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    ranks = _ranks(np.concatenate([positives, negatives]))
    rank_sum = ranks[: len(positives)].sum()
    return float((rank_sum - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def summary_stats(values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    if not len(values):
        return {"rows": 0}
    return {"rows": int(len(values)), "mean": round(float(values.mean()), 6), "std": round(float(values.std()), 6),
            "min": round(float(values.min()), 6), "median": round(float(np.median(values)), 6),
            "max": round(float(values.max()), 6)}


def rm_vs_verifier(rm: np.ndarray, classes: np.ndarray, groups: list[np.ndarray]) -> dict:
    """AUROC of an RM score against the verifier, on the groups that have both verdicts: pooled over their
    rows, and the mean of per-group AUROCs."""
    pooled_pos, pooled_neg, per_group = [], [], []
    for rows in groups:
        pos = rm[rows][(classes[rows] == "correct") & ~np.isnan(rm[rows])]
        neg = rm[rows][(classes[rows] == "incorrect") & ~np.isnan(rm[rows])]
        if len(pos) and len(neg):
            pooled_pos.append(pos)
            pooled_neg.append(neg)
            per_group.append(auroc(pos, neg))
    pooled = auroc(np.concatenate(pooled_pos), np.concatenate(pooled_neg)) if pooled_pos else None
    return {"mixed_groups": len(per_group), "pooled": None if pooled is None else round(pooled, 6),
            "mean_per_group": round(float(np.mean(per_group)), 6) if per_group else None}


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None below 3 rows or for a constant side."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def signals_section(table: pa.Table, classes: np.ndarray, groups: list[np.ndarray], manifest: dict) -> dict:
    """With several reward signals: each one's score by verifier class and AUROC against the verifier, and
    for each pair the mean Spearman correlation of their scores within the groups with mixed verdicts (rows
    both scored; groups of at least 3 such rows)."""
    names = list(manifest["reward_models"])
    values = {n: table.column(SCORE_PREFIX + n).to_numpy(zero_copy_only=False).astype(float) for n in names}
    mixed = [rows for rows in groups if (classes[rows] == "correct").any() and (classes[rows] == "incorrect").any()]
    section = {"fusion_rm": manifest.get("fusion_rm"), "signals": {}, "spearman_within_mixed_groups": {}}
    for name in names:
        section["signals"][name] = {
            "score_by_verifier_class": {c: summary_stats(values[name][classes == c]) for c in ("correct", "incorrect",
                                                                                        "unverified")},
            "auroc_vs_verifier": rm_vs_verifier(values[name], classes, groups)}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            correlations = []
            for rows in mixed:
                x, y = values[first][rows], values[second][rows]
                both = ~np.isnan(x) & ~np.isnan(y)
                rho = spearman(x[both], y[both])
                if rho is not None:
                    correlations.append(rho)
            section["spearman_within_mixed_groups"][f"{first}~{second}"] = {
                "groups": len(correlations),
                "mean": round(float(np.mean(correlations)), 6) if correlations else None}
    return section
