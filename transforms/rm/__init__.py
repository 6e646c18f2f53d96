"""Reward-model backends: score every rollout with a raw RM score (a logit) and a status.

One contract, `RewardBackend` (a base class with a default for everything optional), and a lazy table
of backends by name, `BACKENDS`, holding "module:Class" paths: this module imports none of its plug-ins,
and a backend's own dependencies (torch, vllm) load only when a worker calls its load().

- "transformers" (hub.py, transformers.py, packing.py): AutoModelForSequenceClassification with one
  output, the RM tokenizer's own chat template, packed padding-free batches; GPU when present.
- "vllm" (vllm.py): vLLM's pooling runner, the same rendering and tokenization.
- "precomputed" (simple.py): scores already present in a column of the input.
- "none" (simple.py): no scores (verifier only); the hero columns stay null.
A new backend is one module with a RewardBackend subclass and one line: `register_backend(NAME, "module:Class")`.

rm_status per row: ok, truncated (scored on a truncated input), missing (precomputed value absent),
error (this row could not be scored), skipped (backend "none").
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas.rollouts import RM_FIELDS
from transforms.checks import ALWAYS, NEVER, is_whole, option

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TRUNCATION_SIDES = ("left", "right")

# Backend name -> its class, or "module:Class" imported on first use. The CLI's --rm-backend choices come from here.
BACKENDS: dict[str, object] = {
    "none": "transforms.rm.simple:NoRewardModel",
    "precomputed": "transforms.rm.simple:PrecomputedScores",
    "transformers": "transforms.rm.transformers:TransformersRewardModel",
    "vllm": "transforms.rm.vllm:VllmRewardModel",
}


IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def register_backend(name: str, backend) -> None:
    """Adds a backend under `name`: a RewardBackend subclass, or its "module:Class" path (imported lazily).
    A name registered at import time exists only in processes that ran the registration; on a cluster
    whose workers are other processes, give the backend by its import path instead (`--rm-backend
    package.module:Class`, the one plug-in door), which every worker resolves itself."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ValueError(f"a reward backend name is lower-case letters, digits, '-' and '_', got {name!r}")
    BACKENDS[name] = backend


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_class(name: str) -> type[RewardBackend]:
    """The class registered under `name`, or named by a "package.module:Class" import path, imported on
    first use. Raises ValueError naming rm.backend when there is none."""
    entry = BACKENDS.get(name, name if IMPORT_PATH.fullmatch(str(name)) else None)
    if entry is None:
        raise ValueError(f"rm.backend must be one of {backend_names()} or a 'package.module:Class' import path, "
                         f"got {name!r}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"rm.backend {name!r} cannot be imported ({type(exc).__name__}: {exc})") from exc
        if not (isinstance(entry, type) and issubclass(entry, RewardBackend)):
            raise ValueError(f"rm.backend {name!r} is not a RewardBackend subclass")
        if name in BACKENDS:
            BACKENDS[name] = entry
    return entry


class RewardBackend:
    """What every reward-model backend provides; engines call, in order:

    - `identity()` on the driver, before any data moves (recorded in every shard's metadata); a backend
      that runs a model resolves and checks it here (a missing head is an error, naming --rm-model);
    - `check_schema(schema)` on the driver: raise ValueError naming the rm.* field when the input cannot
      be scored;
    - `load()` once per worker process, where the model will run (device and dtype are resolved there);
    - `score_table(table)` per Arrow batch: returns the table with rm_score (float32, raw logit, null when
      unscored) and rm_status (schemas.RmStatus) appended, row order unchanged;
    - `close()` when the worker is done (a backend with engine processes stops them).
    With several models on one worker (transforms/rm/signals.py) also `room_for_another()` after load (does
    the device have memory for one more model like this one), `park()` (move the model off the device
    into host memory) and `unpark()` (back, before the next score_table). The defaults suit a backend
    whose model lives in host memory anyway: always room, nothing to move.
    `needs_accelerator` places score_table on workers that hold an accelerator (the stage's resources);
    `runs_model` marks a backend whose scores cost compute: counted as rm_scored, cacheable by
    `cache_identity()` (everything a cached score depends on besides the rollout).
    """

    needs_accelerator = False
    runs_model = False

    def __init__(self, config: RewardModelConfig):
        self.config = config

    @classmethod
    def check_config(cls, config: RewardModelConfig) -> None:
        """Raises ValueError naming the rm.* field when `config` cannot work with this backend (called when
        the config is built, before any data moves). Nothing to check by default."""

    def identity(self) -> dict:
        return {"backend": self.config.backend}

    def check_schema(self, schema: pa.Schema) -> None:
        """Nothing to check by default: prompt and response are in every input contract."""

    def load(self) -> None:
        """Nothing to load by default."""

    def score_table(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError(f"{type(self).__name__}.score_table")

    def cache_identity(self) -> dict:
        raise ValueError(f"rm.cache_dir caches scores a model computes; rm.backend={self.config.backend} computes none")

    def room_for_another(self) -> bool:
        return True

    def park(self) -> None:
        """Nothing to move by default."""

    def unpark(self) -> None:
        """Nothing to move by default."""

    def close(self) -> None:
        """Nothing to release by default."""


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward-model settings.

    model: local directory or hub id (transformers backend). revision: hub revision to pin.
    score_column: input column holding scores (precomputed backend).
    max_length: tokens per rollout; longer inputs are truncated on `truncation_side` ("left" keeps the end
    of the response, where sequence-classification RMs read their score) and marked "truncated".
    max_tokens_per_batch: tokens per forward pass (the main memory knob): real tokens for packed causal RMs,
    rows x longest for padded ones. 65,536 keeps a 7B RM well inside an 80 GB GPU in bf16.
    max_batch_size: rollouts per forward pass at most.
    batch_invariant_rows: rows per matrix multiply in the transformers backend's linear layers (every one
    runs at exactly this many, the last chunk padded), so a rollout's score is bit-identical whatever shares
    its batch: a cached score equals a rescored one and an incremental run's data equals a full run's byte for
    byte. Packed RMs only: a padded batch's attention spans its longest row, so padded scores stay equal
    within float noise. 0 multiplies whole packs at once (a little faster; scores then differ across batch
    compositions in the last float bits).
    device: "auto" (every visible GPU, one model copy each, else the CPU), "cpu", "cuda", or a comma list.
    dtype: "auto" is bf16 on GPU and fp32 on CPU.
    tensor_parallel_size, gpu_memory_utilization: vLLM engine arguments (backend "vllm").
    cache_dir: verdict and score caches (local path or fsspec URL; pipeline/storage/content_cache.py): rows
    verified, or scored by the same model and settings, before are not again (scores: backends that run a model).
    """

    backend: str = option(
        "reward-model backend: `transformers` or `vllm` with --rm-model, `precomputed` with --rm-score-column, "
        "`none`: verifier only, or one registered in transforms/rm/",
        name="rm_backend", group="reward model", default_text="inferred", default="none", stored=ALWAYS)
    model: str | None = option(
        "sequence-classification RM with one output: local path or hub id",
        name="rm_model", group="reward model", default=None, stored=ALWAYS)
    revision: str | None = option(
        "hub revision (commit, tag or branch) to pin",
        name="rm_revision", group="reward model", default=None, stored=ALWAYS)
    score_column: str | None = option(
        "input column holding precomputed scores",
        name="rm_score_column", group="reward model", default=None, stored=ALWAYS)
    max_length: int = option(
        "tokens per rollout; longer ones are truncated (`rm_status = truncated`)",
        name="rm_max_length", group="reward model", default=4096, stored=ALWAYS)
    max_tokens_per_batch: int = option(
        "tokens per forward pass, the RM memory knob (real tokens when packed, rows × longest when padded)",
        name="rm_max_tokens_per_batch", group="reward model", default=65536, stored=ALWAYS)
    max_batch_size: int = option(
        "rollouts per forward pass",
        name="rm_max_batch_size", group="reward model", default=512, stored=ALWAYS)
    batch_invariant_rows: int = option(
        "rows per matrix multiply in the RM's linear layers (transformers backend), fixed so that a rollout's "
        "score is bit-identical whatever shares its batch (cached = rescored, incremental = full run); `0`: whole "
        "packs at once, a little faster, scores differ in the last float bits across batch compositions",
        name="rm_batch_invariant_rows", group="reward model", default=512)
    device: str = option(
        "`auto`: one model copy per GPU the worker sees, else cpu (chosen on the worker); `cpu`, `cuda`, or a "
        "list such as `cuda:0,cuda:1`",
        name="rm_device", group="reward model", default="auto", stored=ALWAYS)
    dtype: str = option(
        "`auto`: bf16 on GPU, fp32 on CPU",
        name="rm_dtype", group="reward model", choices=DTYPES, default="auto", stored=ALWAYS)
    truncation_side: str = option(
        "`left` keeps the end of the response, where the RM reads its score",
        name="rm_truncation_side", group="reward model", choices=TRUNCATION_SIDES, default="left", stored=ALWAYS)
    tensor_parallel_size: int = option(
        "GPUs per model copy (vllm backend)",
        name="rm_tensor_parallel_size", group="reward model", default=1, stored=ALWAYS)
    gpu_memory_utilization: float = option(
        "fraction of GPU memory vLLM may take (vllm backend)",
        name="rm_gpu_memory_utilization", group="reward model", default=0.9, stored=ALWAYS)
    cache_dir: str | None = option(
        "verdict and score caches (local path or fsspec URL): rollouts already verified, or scored by the same RM "
        "and settings, are read back instead; the manifest counts both",
        group="reward model", default=None, stored=NEVER)

    def __post_init__(self):
        backend_class(self.backend).check_config(self)  # each backend checks the fields it reads
        for name in ("max_length", "max_tokens_per_batch", "max_batch_size", "tensor_parallel_size"):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise ValueError(f"rm.{name} must be an integer >= 1, got {value!r}")
        if not is_whole(self.batch_invariant_rows, 0):
            raise ValueError(f"rm.batch_invariant_rows must be an integer >= 0 (0: off), got {self.batch_invariant_rows!r}")
        if self.max_tokens_per_batch < self.max_length:
            raise ValueError(
                f"rm.max_tokens_per_batch ({self.max_tokens_per_batch}) must be >= rm.max_length ({self.max_length}) "
                "so that the longest rollout fits in a batch")
        if self.device not in DEVICES and not all(
                re.fullmatch(r"cpu|cuda(:\d+)?", d.strip()) for d in str(self.device).split(",")):
            raise ValueError(f"rm.device must be one of {DEVICES} or a comma list such as 'cuda:0,cuda:1', "
                             f"got {self.device!r}")
        if not (isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"rm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"rm.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"rm.truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}")


def rm_columns(table: pa.Table, scores: np.ndarray, statuses: list[str],
               names: tuple[str, str] = tuple(f.name for f in RM_FIELDS)) -> pa.Table:
    """`table` with rm_score (float32; null where NaN) and rm_status appended (or the two columns `names`:
    a reward signal's rm_score__NAME and rm_status__NAME)."""
    missing = np.isnan(scores)
    columns = [pa.array(np.where(missing, 0.0, scores).astype(np.float32), pa.float32(), mask=missing),
               pa.array(statuses, pa.string())]
    for f, name, column in zip(RM_FIELDS, names, columns):
        table = table.append_column(pa.field(name, f.type), column)
    return table


def make_reward_model(config: RewardModelConfig) -> RewardBackend:
    """The backend object for `config` (not loaded: call load() in the worker that will use it)."""
    return backend_class(config.backend)(config)
