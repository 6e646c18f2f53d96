"""Reward-model backends: score every rollout with a raw RM score (a logit) and a status.

Backends:
- "transformers": AutoModelForSequenceClassification with one output; the RM tokenizer's own chat
  template applied to [user: prompt, assistant: response]; length-sorted batches under a token budget;
  GPU when present, CPU otherwise. Loaded once per worker (load()), never per batch.
- "precomputed": scores already present in a column of the input.
- "none": no scores (verifier only); the hero columns stay null.

rm_status per row: ok, truncated (scored on a truncated input), missing (precomputed value absent),
error (this row could not be scored), skipped (backend "none").
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from schemas.rollouts import PROMPT, RESPONSE, RM_FIELDS, RmStatus
from transforms.checks import is_whole

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TRUNCATION_SIDES = ("left", "right")


@runtime_checkable
class RewardBackend(Protocol):
    """What every reward-model backend provides. Engines call, in order:

    - `identity()` on the driver, before any data moves (recorded in every shard's metadata);
    - `check_schema(schema)` on the driver: raise ValueError naming the rm.* field when the input cannot
      be scored (a backend with nothing to check returns None);
    - `load()` once per worker process, where the model will run (device and dtype are resolved there);
    - `score_table(table)` per Arrow batch: returns the table with rm_score (float32, raw logit, null when
      unscored) and rm_status (schemas.RmStatus) appended, row order unchanged.
    `needs_accelerator` tells the engine to place score_table on workers that hold an accelerator
    resource (Dask) or carry an accelerator hint (Beam on a remote runner).
    """

    needs_accelerator: bool

    def identity(self) -> dict: ...

    def check_schema(self, schema: pa.Schema) -> None: ...

    def load(self) -> None: ...

    def score_table(self, table: pa.Table) -> pa.Table: ...


# Backend name -> class; filled by @register_backend below. The CLI's --rm-backend choices come from here.
REWARD_BACKENDS: dict[str, Callable[["RewardModelConfig"], RewardBackend]] = {}


def register_backend(name: str):
    """Class decorator adding a backend to REWARD_BACKENDS under `name`."""

    def add(cls):
        REWARD_BACKENDS[name] = cls
        return cls

    return add


def backend_names() -> tuple[str, ...]:
    return tuple(REWARD_BACKENDS)


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward-model settings.

    model: local directory or hub id (transformers backend). revision: hub revision to pin.
    score_column: input column holding scores (precomputed backend).
    max_length: tokens per rollout; longer inputs are truncated on `truncation_side` ("left" keeps the end
    of the response, where sequence-classification RMs read their score) and marked "truncated".
    max_tokens_per_batch: padded tokens per forward pass (batch size x longest sequence); the main memory knob.
    max_batch_size: rollouts per forward pass at most.
    """

    backend: str = "none"
    model: str | None = None
    revision: str | None = None
    score_column: str | None = None
    max_length: int = 4096
    max_tokens_per_batch: int = 16384
    max_batch_size: int = 64
    device: str = "auto"
    dtype: str = "auto"
    truncation_side: str = "left"

    def __post_init__(self):
        if self.backend not in REWARD_BACKENDS:
            raise ValueError(f"rm.backend must be one of {backend_names()}, got {self.backend!r}")
        if self.backend == "transformers" and not self.model:
            raise ValueError("rm.model is required with rm.backend=transformers (a local path or a hub id)")
        if self.backend == "precomputed" and not self.score_column:
            raise ValueError("rm.score_column is required with rm.backend=precomputed")
        for name in ("max_length", "max_tokens_per_batch", "max_batch_size"):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise ValueError(f"rm.{name} must be an integer >= 1, got {value!r}")
        if self.max_tokens_per_batch < self.max_length:
            raise ValueError(
                f"rm.max_tokens_per_batch ({self.max_tokens_per_batch}) must be >= rm.max_length ({self.max_length}) "
                "so that the longest rollout fits in a batch")
        if self.device not in DEVICES:
            raise ValueError(f"rm.device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"rm.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"rm.truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}")


def _rm_columns(table: pa.Table, scores: np.ndarray, statuses: list[str]) -> pa.Table:
    missing = np.isnan(scores)
    columns = [pa.array(np.where(missing, 0.0, scores).astype(np.float32), pa.float32(), mask=missing),
               pa.array(statuses, pa.string())]
    for f, column in zip(RM_FIELDS, columns):
        table = table.append_column(f, column)
    return table


@register_backend("none")
class NoRewardModel:
    """Backend "none": every rollout unscored, status "skipped"."""

    needs_accelerator = False

    def __init__(self, config: RewardModelConfig):
        self.config = config

    def check_schema(self, schema: pa.Schema):
        """Any input works."""

    def load(self):
        """Nothing to load."""

    def identity(self) -> dict:
        return {"backend": "none"}

    def score_table(self, table: pa.Table) -> pa.Table:
        return _rm_columns(table, np.full(table.num_rows, np.nan), [RmStatus.SKIPPED] * table.num_rows)


@register_backend("precomputed")
class PrecomputedScores:
    """Backend "precomputed": scores read from `score_column`; null or NaN values become "missing"."""

    needs_accelerator = False

    def __init__(self, config: RewardModelConfig):
        self.config = config

    def load(self):
        """Nothing to load: scores come with the rows."""

    def identity(self) -> dict:
        return {"backend": "precomputed", "name": f"column:{self.config.score_column}"}

    def check_schema(self, schema: pa.Schema):
        """Fails before any data moves when the score column is absent or not numeric."""
        column = self.config.score_column
        if column not in schema.names:
            raise ValueError(f"rm.score_column {column!r} is not an input column (columns: {', '.join(schema.names)})")
        t = schema.field(column).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)):
            raise ValueError(f"rm.score_column {column!r} has type {t}, expected a number")

    def score_table(self, table: pa.Table) -> pa.Table:
        column = table.column(self.config.score_column).cast(pa.float64())
        scores = column.to_numpy() if column.null_count == 0 else np.array(
            [np.nan if v is None else v for v in column.to_pylist()], dtype=np.float64)
        scores = np.where(np.isfinite(scores), scores, np.nan)
        statuses = np.where(np.isnan(scores), RmStatus.MISSING, RmStatus.OK).tolist()
        return _rm_columns(table, scores, statuses)


def _fingerprint_dir(path: str) -> str:
    """sha256 over each file's name, size and first/last MiB: identifies weights without reading GBs."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            digest.update(f"{os.path.relpath(full, path)}\0{size}\0".encode())
            with open(full, "rb") as handle:
                digest.update(handle.read(1 << 20))
                if size > 2 << 20:
                    handle.seek(-(1 << 20), os.SEEK_END)
                    digest.update(handle.read())
    return digest.hexdigest()[:16]


def plan_batches(lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Groups row indices into batches of similar length whose padded size stays under `max_tokens`.

    Rows are sorted by length so padding is small; a batch grows while (rows x longest) <= max_tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], 1)  # sorted ascending: the new row is the longest
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@register_backend("transformers")
class TransformersRewardModel:
    """Backend "transformers": a sequence-classification RM with one output, run with torch.

    Throughput on this project's 2-core CPU with the demo's tiny model: thousands of rows/s; with a
    7B RM on one H100 in bf16, expect hundreds of rows/s at 1-2k tokens each. Placed on accelerator
    workers by the engines (it runs on CPU when the worker has no GPU).
    """

    needs_accelerator = True

    def __init__(self, config: RewardModelConfig):
        self.config = config
        self.model = None
        self.tokenizer = None
        self.device = None
        self._warned_no_template = False

    def identity(self) -> dict:
        name = self.config.model
        identity = {"backend": "transformers", "name": name, "revision": self.config.revision}
        if os.path.isdir(name):
            identity["fingerprint"] = _fingerprint_dir(name)
        return identity

    def check_schema(self, schema: pa.Schema):
        """Scores prompt + response, which the input contract already requires."""

    def load(self):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise ImportError("the transformers backend needs torch and transformers: pip install 'herolabel[rm]' "
                              "(pin torch, e.g. torch==2.13.0 for the CPU build)") from exc
        transformers_logging.disable_progress_bar()  # per-shard loading bars would drown the run's progress line
        config = self.config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
        local = os.path.isdir(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision, local_files_only=local)
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model, revision=config.revision, local_files_only=local, dtype=dtype)
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {config.model!r} has num_labels={model.config.num_labels}; "
                             "a reward model must have exactly one output")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device).eval()
        self.device = device
        self._torch = torch

    def _render(self, prompt, response: str) -> tuple[list[int], bool]:
        """Token ids for one rollout (chat template when the tokenizer has one) and whether it was truncated."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
            messages.append({"role": "assistant", "content": response})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not self._warned_no_template:
                log.warning("reward model tokenizer has no chat template; scoring 'prompt\\n\\nresponse'")
                self._warned_no_template = True
            text_prompt = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            ids = self.tokenizer(f"{text_prompt}\n\n{response}")["input_ids"]
        limit = self.config.max_length
        if len(ids) <= limit:
            return ids, False
        return (ids[-limit:] if self.config.truncation_side == "left" else ids[:limit]), True

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        torch = self._torch
        longest = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
        return logits[:, 0].float().cpu().numpy().astype(np.float64)

    def _forward_with_backoff(self, batch: list[list[int]]) -> np.ndarray:
        """Runs a batch; on GPU out-of-memory halves it and retries (a single row that OOMs gets NaN)."""
        torch = self._torch
        try:
            return self._forward(batch)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) == 1:
                log.error("reward model ran out of memory on a single rollout of %d tokens", len(batch[0]))
                return np.array([np.nan])
            middle = len(batch) // 2
            return np.concatenate([self._forward_with_backoff(batch[:middle]), self._forward_with_backoff(batch[middle:])])

    def score_table(self, table: pa.Table) -> pa.Table:
        if self.model is None:
            raise RuntimeError("TransformersRewardModel.load() must run (once per worker) before score_table()")
        n = table.num_rows
        prompts = table.column(PROMPT).to_pylist()
        responses = table.column(RESPONSE).to_pylist()
        scores = np.full(n, np.nan)
        statuses = [RmStatus.OK] * n
        encoded: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            try:
                encoded[i], truncated = self._render(prompts[i], responses[i])
            except Exception as exc:  # noqa: BLE001 - a row the template cannot render is a bad record
                log.warning("reward model cannot render row %d: %s", i, exc)
                statuses[i] = RmStatus.ERROR
                continue
            if truncated:
                statuses[i] = RmStatus.TRUNCATED
        rows = [i for i in range(n) if statuses[i] != RmStatus.ERROR]
        lengths = [len(encoded[i]) for i in rows]
        for batch in plan_batches(lengths, self.config.max_tokens_per_batch, self.config.max_batch_size):
            indices = [rows[j] for j in batch]
            values = self._forward_with_backoff([encoded[i] for i in indices])
            for i, value in zip(indices, values):
                if math.isfinite(value):
                    scores[i] = value
                else:
                    statuses[i] = RmStatus.ERROR
        return _rm_columns(table, scores, statuses)


def make_reward_model(config: RewardModelConfig) -> RewardBackend:
    """The backend object for `config` (not loaded: call load() in the worker that will use it)."""
    return REWARD_BACKENDS[config.backend](config)
