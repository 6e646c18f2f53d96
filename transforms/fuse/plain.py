"""The plain rewards, to compare a fusion against: `verifier` (the verdict alone) and `rm` (the RM score alone).

Each writes its reward and the advantage trainers read, normalized in the prompt group exactly as HERO's
(docs/HERO.md, with --advantage-mode and --eps):
    advantage = (r - mean_group(r)) / (std_group(r) + eps)     population std ("grpo")
              = r - mean_group(r)                                ("mean-only")
so that comparing modes compares rewards, not normalizations. No job statistic. Vectorized with numpy
over many complete groups: about 1 microsecond per row.

verifier: r = verifier_score (a null verdict counts as 0, as in HERO); a group with no usable reference
(some rollout no_reference / bad_reference) gets null columns and that status.
rm: r = rm_score (a several-model run's fusion signal or ensemble); a group where some rollout has no
score gets null columns and status rm_missing. A run without reward-model scores cannot use it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import VerifierStatus
from transforms.fuse import Fusion, group_advantage, group_segments


class _PlainFusion(Fusion):
    """One reward column per row, its group advantage, and a status per group."""

    reward_source = ""
    status_column = ""
    vocabulary: tuple[str, ...] = ("ok",)

    def __init__(self, settings, rm_scores: bool):
        super().__init__(settings, rm_scores)
        self.hero = settings["hero"]
        self.fields = (pa.field("group_size", pa.int32()), pa.field(self.reward_column, pa.float64()),
                       pa.field("advantage", pa.float64()), pa.field(self.status_column, pa.string()))
        self.statuses = {self.status_column: self.vocabulary}

    def values(self, table: pa.Table, starts: np.ndarray, group_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward per row, status per row: "ok" or why its group has none) of a table sorted into groups."""
        raise NotImplementedError

    def fuse(self, table: pa.Table, statistic) -> pa.Table:
        table, starts, sizes, group_of_row = group_segments(table)
        reward, status = self.values(table, starts, group_of_row)
        keep = status == "ok"
        advantage = group_advantage(reward, keep, starts, np.maximum(sizes, 1), group_of_row, self.hero.eps,
                                    self.hero.advantage_mode)
        columns = [pa.array(sizes[group_of_row].astype(np.int32), pa.int32()),
                   pa.array(np.where(keep, reward, 0.0), pa.float64(), mask=~keep),
                   pa.array(np.where(keep, advantage, 0.0), pa.float64(), mask=~keep),
                   pa.array(status.tolist(), pa.string())]
        for spec, column in zip(self.fields, columns):
            table = table.append_column(spec, column)
        return table

    @staticmethod
    def _per_group(hits: np.ndarray, starts: np.ndarray, group_of_row: np.ndarray) -> np.ndarray:
        """Whether any row of each row's group is a hit."""
        if not len(hits):
            return np.zeros(0, dtype=bool)
        return (np.add.reduceat(hits.astype(np.int64), starts) > 0)[group_of_row]


class VerifierFusion(_PlainFusion):
    name = "verifier"
    reward_column = "verifier_reward"
    status_column = "verifier_reward_status"
    vocabulary = ("ok", VerifierStatus.NO_REFERENCE, VerifierStatus.BAD_REFERENCE)
    title = "the verifier's verdict alone (no reward model), normalized per prompt group"
    column_notes = {
        "group_size": "responses of the prompt",
        "verifier_reward": "verifier_score (a null verdict counts as 0)",
        "advantage": "verifier_reward normalized in its group, per --advantage-mode",
        "verifier_reward_status": "ok, no_reference or bad_reference (the group has no usable reference)",
    }

    def values(self, table, starts, group_of_row):
        reward = pc.fill_null(table.column("verifier_score").cast(pa.float64()), 0.0).to_numpy(
            zero_copy_only=False)
        status = np.full(table.num_rows, "ok", dtype=object)
        verifier_status = table.column("verifier_status")
        for unusable in (VerifierStatus.BAD_REFERENCE, VerifierStatus.NO_REFERENCE):  # no_reference wins
            hits = pc.fill_null(pc.equal(verifier_status, unusable), False).to_numpy(zero_copy_only=False)
            status[self._per_group(hits, starts, group_of_row)] = unusable
        return reward, status


class RmFusion(_PlainFusion):
    name = "rm"
    reward_column = "rm_reward"
    status_column = "rm_reward_status"
    vocabulary = ("ok", "rm_missing")
    title = "the reward model's score alone (no verifier), normalized per prompt group"
    column_notes = {
        "group_size": "responses of the prompt",
        "rm_reward": "rm_score (the fusion's reward signal)",
        "advantage": "rm_reward normalized in its group, per --advantage-mode",
        "rm_reward_status": "ok, or rm_missing (some rollout of the group has no RM score)",
    }

    def __init__(self, settings, rm_scores: bool):
        if not rm_scores:
            raise ValueError("pipeline.fusion rm needs reward-model scores; this run has rm.backend none")
        super().__init__(settings, rm_scores)

    def values(self, table, starts, group_of_row):
        reward = pc.fill_null(table.column("rm_score").cast(pa.float64()), np.nan).to_numpy()
        missing = self._per_group(np.isnan(reward), starts, group_of_row)
        return np.where(np.isnan(reward), 0.0, reward), np.where(missing, "rm_missing", "ok").astype(object)
