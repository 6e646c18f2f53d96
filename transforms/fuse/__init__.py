"""Fusions: how a verifier verdict and a reward-model score become one reward per rollout, per prompt group.

One contract, `Fusion`, and a lazy table of fusions by name, `FUSIONS` ("module:Class", imported on first
use). HERO (hero.py) is the first implementation. A fusion works in passes over complete prompt
groups, so that engines can run it at any scale without holding the job in memory:

    partial(bucket table, earlier) -> P          per bucket of whole groups, on workers (columns: partial_columns)
    combine([P, ...], earlier) -> statistic      exact and independent of the order partials arrive in
    fuse(table, statistic) -> table              per bucket: the fusion's columns (`fields`) appended

`rounds` partial passes run one after the other, each given the statistic of the one before (`earlier`;
known_statistic() before the first): HERO needs one (sigma_bar), or none with a fixed --sigma-bar; an RM
ensemble adds one before (its members' z scales). `job_statistic` runs them where the data is local.
The output's schema, status checks, DPO pairs (ranked by `reward_column`), the report and the dataset
card read the fusion, never a fixed column list. A new fusion is one module with a Fusion subclass and one
line: `register_fusion(NAME, "module:Class")`.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import ORDER, PROMPT_ID


class GroupSegments(NamedTuple):
    """A table sorted by (prompt_id, order) and where its groups lie: first row, size, and each row's group."""

    table: pa.Table
    starts: np.ndarray
    sizes: np.ndarray
    group_of_row: np.ndarray


def group_segments(table: pa.Table) -> GroupSegments:
    """Sorts `table` by (prompt_id, order) and finds its prompt groups (vectorized, no per-row Python)."""
    table = table.sort_by([(PROMPT_ID, "ascending"), (ORDER, "ascending")])
    n = table.num_rows
    ids = table.column(PROMPT_ID).combine_chunks()
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new_group)
    return GroupSegments(table, starts, np.diff(np.append(starts, n)), np.cumsum(new_group) - 1)


def group_advantage(values: np.ndarray, keep: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                    group_of_row: np.ndarray, eps: float, mode: str) -> np.ndarray:
    """HERO's advantage of `values` per group (docs/HERO.md: population std; `mode` grpo or mean-only); rows
    outside `keep` count as 0 in the group's mean and std. HERO multiplies it by its weight."""
    if not len(values):
        return np.zeros(0)
    kept = np.where(keep, values, 0.0)
    mean = (np.add.reduceat(kept, starts) / sizes)[group_of_row]
    centered = values - mean
    if mode == "mean-only":
        return centered
    std = np.sqrt(np.add.reduceat((kept - mean) ** 2, starts) / sizes)[group_of_row]
    return centered / (std + eps)


class Fusion:
    """What every fusion provides (defaults for everything optional).

    name: its registry name. reward_column: the column pairs rank by and the report summarizes.
    fields: the columns fuse() appends, in order (the tail of the output schema). statuses: status column
    -> vocabulary, checked when the output is read back. column_notes: column -> meaning (dataset card).
    The constructor takes the run's config sections by name (`settings["hero"]`: HeroConfig; and
    `settings["rm_signals"]`, the named reward signals when a run has several) and whether the job has
    reward-model scores.
    """

    name = ""
    reward_column = ""
    fields: tuple[pa.Field, ...] = ()
    statuses: dict[str, tuple[str, ...]] = {}
    column_notes: dict[str, str] = {}
    partial_columns: tuple[str, ...] = (PROMPT_ID, ORDER)
    rounds = 0  # partial passes before fuse (0: the statistic is known before any data moves)

    def __init__(self, settings: Mapping[str, object], rm_scores: bool):
        self.settings = settings
        self.rm_scores = rm_scores

    def known_statistic(self):
        """The job statistic when it is known before any data moves (rounds 0), or what the first pass gets."""
        return None

    def partial(self, table: pa.Table, earlier=None):
        """Partial statistic of one bucket of complete groups (`earlier`: the previous pass's statistic)."""
        return None

    def combine(self, partials: Iterable, earlier=None):
        """The statistic of a pass from every bucket's partial; must not depend on their order."""
        return None

    def check_reward_model(self, identity: dict) -> None:
        """Raises ValueError when the run's reward model (its identity, resolved before any data moves) is not
        one the fusion can use (posterior: the model its calibration was scored by)."""

    def fuse(self, table: pa.Table, statistic) -> pa.Table:
        raise NotImplementedError(f"{type(self).__name__}.fuse")

    def shard_metadata(self, statistic) -> dict:
        """What each output shard records about the fusion (beside the run's metadata)."""
        return {}

    def manifest(self, shard_metadata: dict) -> dict:
        """What the manifest records, from a written shard's metadata (a resumed run's shards too)."""
        return {}

    @property
    def title(self) -> str:
        """How the dataset card names what the fusion does."""
        return f"the `{self.name}` fusion of both per prompt group"

    def describe(self) -> dict:
        """The fusion's name, reward column and title, for readers of the manifest (report, card)."""
        return {"name": self.name, "reward_column": self.reward_column, "title": self.title}


FUSIONS: dict[str, object] = {"hero": "transforms.fuse.hero:HeroFusion", "gdpo": "transforms.fuse.gdpo:GdpoFusion",
                              "verifier": "transforms.fuse.plain:VerifierFusion",
                              "rm": "transforms.fuse.plain:RmFusion",
                              "posterior": "transforms.fuse.posterior:PosteriorFusion"}


def register_fusion(name: str, fusion) -> None:
    """Adds a fusion under `name`: a Fusion subclass or its "module:Class" path (imported lazily)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ValueError(f"a fusion name is lower-case letters, digits, '-' and '_', got {name!r}")
    FUSIONS[name] = fusion


def fusion_class(name: str) -> type[Fusion]:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {tuple(FUSIONS)}")
    entry = FUSIONS[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = FUSIONS[name] = getattr(importlib.import_module(module), attribute)
    return entry


def make_fusion(name: str, settings: Mapping[str, object], rm_scores: bool) -> Fusion:
    """The fusion `name` over the run's settings (an RM ensemble wraps it: ensemble.py, pipeline/config.py)."""
    return fusion_class(name)(settings, rm_scores)


def job_statistic(fusion: Fusion, partials_of: Callable[[object], Iterable]):
    """The job statistic, pass by pass: `partials_of(earlier)` gives every bucket's partial of one pass."""
    statistic = fusion.known_statistic()
    for _ in range(fusion.rounds):
        statistic = fusion.combine(list(partials_of(statistic)), statistic)
    return statistic
