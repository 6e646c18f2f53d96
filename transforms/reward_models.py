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
import json
import logging
import math
import os
import re
import threading
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
    max_tokens_per_batch: tokens per forward pass (the main memory knob): real tokens for packed causal RMs,
    rows x longest for padded ones. 65,536 keeps a 7B RM well inside an 80 GB GPU in bf16.
    max_batch_size: rollouts per forward pass at most.
    device: "auto" (every visible GPU, one model copy each, else the CPU), "cpu", "cuda", or a comma list.
    dtype: "auto" is bf16 on GPU and fp32 on CPU.
    tensor_parallel_size, gpu_memory_utilization: vLLM engine arguments (backend "vllm").
    cache_dir: score cache (local path or fsspec URL; pipeline/score_cache.py): rows scored before by the
    same model and settings are not scored again. Backends that run a model only.
    """

    backend: str = "none"
    model: str | None = None
    revision: str | None = None
    score_column: str | None = None
    max_length: int = 4096
    max_tokens_per_batch: int = 65536
    max_batch_size: int = 512
    device: str = "auto"
    dtype: str = "auto"
    truncation_side: str = "left"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    cache_dir: str | None = None

    def __post_init__(self):
        if self.backend not in REWARD_BACKENDS:
            raise ValueError(f"rm.backend must be one of {backend_names()}, got {self.backend!r}")
        if self.backend in ("transformers", "vllm") and not self.model:
            raise ValueError(f"rm.model is required with rm.backend={self.backend} (a local path or a hub id)")
        if self.backend == "vllm" and self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rm.device {self.device!r}: the vllm backend places its model itself (auto, cpu or "
                             "cuda; GPUs per copy with rm.tensor_parallel_size)")
        if self.cache_dir and self.backend in ("none", "precomputed"):
            raise ValueError(f"rm.cache_dir caches scores a model computes; rm.backend={self.backend} computes none")
        if self.backend == "precomputed" and not self.score_column:
            raise ValueError("rm.score_column is required with rm.backend=precomputed")
        for name in ("max_length", "max_tokens_per_batch", "max_batch_size", "tensor_parallel_size"):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise ValueError(f"rm.{name} must be an integer >= 1, got {value!r}")
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


def rm_columns(table: pa.Table, scores: np.ndarray, statuses: list[str]) -> pa.Table:
    """`table` with rm_score (float32; null where NaN) and rm_status appended."""
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
        return rm_columns(table, np.full(table.num_rows, np.nan), [RmStatus.SKIPPED] * table.num_rows)


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
        return rm_columns(table, scores, statuses)


def _digest_memo_path() -> str:
    root = os.environ.get("HEROLABEL_CACHE_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "herolabel")
    return os.path.join(root, "file-digests.json")


_DIGEST_LOCK = threading.Lock()


def file_sha256(path: str) -> str:
    """sha256 of a file's whole content, remembered by (real path, size, mtime, inode, device, ctime) in
    ~/.cache/herolabel/file-digests.json (or $HEROLABEL_CACHE_HOME): a 15 GB checkpoint is read once
    (about 10 s at 1.5 GB/s), then never again until it changes."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    # Size and mtime, plus inode, device and ctime: a same-size copy with a preserved mtime (cp -p,
    # rsync -a) is a new inode with a new ctime, so it is hashed again.
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev, stat.st_ctime_ns]
    memo_path = _digest_memo_path()
    with _DIGEST_LOCK:
        try:
            with open(memo_path) as handle:
                memo = json.load(handle)
        except (OSError, ValueError):
            memo = {}
        entry = memo.get(real)
        if entry and entry[:-1] == stamp:
            return entry[-1]
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            for block in iter(lambda: handle.read(8 << 20), b""):
                digest.update(block)
        memo[real] = [*stamp, digest.hexdigest()]
        try:
            os.makedirs(os.path.dirname(memo_path), exist_ok=True)
            temp = f"{memo_path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(temp, "w") as handle:
                json.dump(memo, handle)
            os.replace(temp, memo_path)
        except OSError as exc:  # a read-only home: the digest is still right, only not remembered
            log.warning("cannot remember file digests in %s: %s", memo_path, exc)
        return memo[real][-1]


def fingerprint_dir(path: str) -> str:
    """sha256 over every file's relative name and full-content sha256: two fine-tunes that share a
    header or a tail still differ; any changed byte changes it."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}\0{file_sha256(full)}\0".encode())
    return digest.hexdigest()[:32]


def encode_rollouts(tokenizer, prompts: list, responses: list, max_length: int,
                    truncation_side: str) -> tuple[list[list[int] | None], list[bool], list[str | None]]:
    """Token ids of each rollout as the RM reads it, shared by every backend that tokenizes.

    With a chat template: [the prompt's messages (or a user message), assistant: response] rendered by the
    tokenizer's own template, then tokenized in one batched call. Without one: "prompt\n\nresponse" with the
    tokenizer's special tokens. Longer than max_length: cut on truncation_side ("left" keeps the end).
    Returns (ids or None, truncated, error message or None) per row; a row the template cannot render
    is an error, not a failed batch. About 20k rows/s on one core for 1k-token rows.
    """
    n = len(prompts)
    errors: list[str | None] = [None] * n
    texts: list[str] = [""] * n
    template = bool(getattr(tokenizer, "chat_template", None))
    for i in range(n):
        prompt, response = prompts[i], responses[i]
        try:
            if template:
                messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                messages = [{"role": m["role"], "content": m["content"]} for m in messages]
                messages.append({"role": "assistant", "content": response})
                texts[i] = tokenizer.apply_chat_template(messages, tokenize=False)
            else:
                text_prompt = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
                texts[i] = f"{text_prompt}\n\n{response}"
        except Exception as exc:  # noqa: BLE001 - a row the template cannot render is a bad record
            errors[i] = f"{type(exc).__name__}: {exc}"
    good = [i for i in range(n) if errors[i] is None]
    encoded = tokenizer([texts[i] for i in good], add_special_tokens=not template)["input_ids"] if good else []
    ids: list[list[int] | None] = [None] * n
    truncated = [False] * n
    for i, row in zip(good, encoded):
        if len(row) > max_length:
            row = row[-max_length:] if truncation_side == "left" else row[:max_length]
            truncated[i] = True
        ids[i] = row
    return ids, truncated, errors


def resolve_transformers_model(config: "RewardModelConfig") -> dict:
    """Driver-side check, before any data moves: the RM's config and tokenizer load, it has one output.
    Returns its identity: name, resolved hub commit (a hub id) or full-content fingerprint (a local
    directory), and the chat template's sha256. Raises ValueError naming rm.model."""
    try:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import cached_file
    except ImportError as exc:
        raise ValueError("rm.backend transformers/vllm needs transformers: pip install 'herolabel[rm]'") from exc
    name = config.model
    local = os.path.isdir(name)
    if not local and (name.startswith((".", "/", "~")) or os.path.exists(name)):
        raise ValueError(f"rm.model {name!r} is not a directory (a local model is a directory with config.json)")
    try:
        model_config = AutoConfig.from_pretrained(name, revision=config.revision, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=config.revision, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"rm.model {name!r} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    if getattr(model_config, "num_labels", None) != 1:
        raise ValueError(f"rm.model {name!r} has num_labels={getattr(model_config, 'num_labels', None)}; "
                         "a reward model must have exactly one output")
    identity = {"name": name, "revision": config.revision}
    if local:
        identity["fingerprint"] = fingerprint_dir(name)
    else:
        resolved = cached_file(name, "config.json", revision=config.revision)
        snapshot = os.path.basename(os.path.dirname(resolved))
        if os.path.basename(os.path.dirname(os.path.dirname(resolved))) == "snapshots":
            identity["commit"] = snapshot
    template = getattr(tokenizer, "chat_template", None) or ""
    identity["chat_template_sha256"] = hashlib.sha256(template.encode()).hexdigest()[:16]
    return identity


class ModelFromHub:
    """What the backends that run a model from rm.model (transformers, vllm) share: the identity resolved
    on the driver before any data moves, and the cache identity once load() has resolved the dtype."""

    backend_name = ""
    needs_accelerator = True

    def __init__(self, config: RewardModelConfig):
        self.config = config
        self.tokenizer = None
        self.dtype_name: str | None = None  # set by load()
        self._identity = None

    def identity(self) -> dict:
        """Resolves the model on the driver (fails fast, naming rm.model) and returns its identity."""
        if self._identity is None:
            self._identity = {"backend": self.backend_name, **resolve_transformers_model(self.config)}
        return self._identity

    def cache_identity(self) -> dict:
        """Everything a cached score depends on besides the rollout itself."""
        if self.dtype_name is None:
            raise RuntimeError("cache_identity() needs load() first: the dtype is resolved on the worker")
        identity = self.identity()
        if not identity.get("commit") and not identity.get("fingerprint"):
            raise ValueError(f"rm.cache_dir needs a pinned model: {self.config.model!r} resolved to neither a hub "
                             "commit nor a local directory, so its weights could change under the cache")
        c = self.config
        return {**self.identity(), "dtype": self.dtype_name, "max_length": c.max_length,
                "truncation_side": c.truncation_side}

    def check_schema(self, schema: pa.Schema):
        """Scores prompt + response, which the input contract already requires."""


@register_backend("transformers")
class TransformersRewardModel(ModelFromHub):
    """Backend "transformers": a sequence-classification RM with one output, run with torch.

    Causal RMs with a linear score head (Llama, Qwen, Mistral, Gemma ... ForSequenceClassification) run
    padding-free: rows packed up to max_tokens_per_batch real tokens per forward, attention kept inside
    each row (transforms/rm_torch.py), so a row's score is the same whatever shares its batch. bf16 + flash
    attention on GPU; one model copy per visible GPU; forwards on a copy serialized; out of memory halves
    the batch. On a 7B RM on one H100: see benchmarks/rm_throughput.py (--shape qwen2-7b).
    """

    backend_name = "transformers"

    def __init__(self, config: RewardModelConfig):
        super().__init__(config)
        self.scorer = None
        self._warned_no_template = False

    def load(self):
        """Loads one model copy per device (rm.device), bf16 on GPU and fp32 on CPU for dtype auto."""
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise ImportError("the transformers backend needs torch and transformers: pip install 'herolabel[rm]' "
                              "(pin torch, e.g. torch==2.13.0 for the CPU build)") from exc
        from transforms import rm_torch

        transformers_logging.disable_progress_bar()  # per-shard loading bars would drown the run's progress line
        config = self.config
        devices = rm_torch.resolve_devices(config.device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        on_gpu = devices[0].startswith("cuda")
        self.dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        dtype = getattr(torch, self.dtype_name)
        local = os.path.isdir(config.model)
        tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision, local_files_only=local)
        rm_torch.register_packed_attention()
        replicas = []
        for device in devices:
            model = AutoModelForSequenceClassification.from_pretrained(
                config.model, revision=config.revision, local_files_only=local, dtype=dtype,
                attn_implementation="sdpa")
            replicas.append(self._replica(model, device))
        self.attach(replicas, tokenizer)

    @staticmethod
    def _replica(model, device: str):
        """A model moved to `device` for scoring: packed attention when its architecture allows it."""
        import threading as _threading

        from transforms import rm_torch

        if model.config.num_labels != 1:
            raise ValueError(f"reward model has num_labels={model.config.num_labels}; a reward model must have "
                             "exactly one output")
        packed = rm_torch.can_pack(model)
        if packed:
            rm_torch.register_packed_attention()
            model.config._attn_implementation = rm_torch.PACKED_ATTENTION
        return rm_torch.Replica(model.to(device).eval(), device, packed, _threading.Lock())

    def attach(self, replicas, tokenizer) -> None:
        """Uses already-built model copies (load() calls this; a benchmark with an in-memory model too)."""
        from transforms import rm_torch

        if tokenizer.pad_token_id is None:
            # Only the padded path reads it, and it reads scores by length, never by pad position.
            tokenizer.pad_token = tokenizer.eos_token
        for replica in replicas:
            replica.model.config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        if self.dtype_name is None:
            self.dtype_name = str(next(replicas[0].model.parameters()).dtype).removeprefix("torch.")
        self.scorer = rm_torch.Scorer(replicas, tokenizer.pad_token_id, self.config.max_tokens_per_batch,
                                      self.config.max_batch_size)
        rm_torch.check_varlen_kernel(replicas[0], tokenizer.pad_token_id)
        if not getattr(tokenizer, "chat_template", None) and not self._warned_no_template:
            log.warning("reward model tokenizer has no chat template; scoring 'prompt\\n\\nresponse'")
            self._warned_no_template = True

    def encode(self, prompts: list, responses: list):
        return encode_rollouts(self.tokenizer, prompts, responses, self.config.max_length, self.config.truncation_side)

    def score_table(self, table: pa.Table) -> pa.Table:
        if self.scorer is None:
            raise RuntimeError("TransformersRewardModel.load() must run (once per worker) before score_table()")
        n = table.num_rows
        ids, truncated, errors = self.encode(table.column(PROMPT).to_pylist(), table.column(RESPONSE).to_pylist())
        statuses = [RmStatus.OK] * n
        for i in range(n):
            if errors[i] is not None:
                log.warning("reward model cannot render row %d: %s", i, errors[i])
                statuses[i] = RmStatus.ERROR
            elif truncated[i]:
                statuses[i] = RmStatus.TRUNCATED
        rows = [i for i in range(n) if ids[i] is not None]
        scores = np.full(n, np.nan)
        scores[rows] = self.scorer.score([ids[i] for i in rows])
        for i in rows:
            if not math.isfinite(scores[i]):
                statuses[i] = RmStatus.ERROR
        return rm_columns(table, scores, statuses)


def make_reward_model(config: RewardModelConfig) -> RewardBackend:
    """The backend object for `config` (not loaded: call load() in the worker that will use it)."""
    return REWARD_BACKENDS[config.backend](config)


# Registers backend "vllm" (vllm itself is imported only when that backend loads).
from transforms import rm_vllm  # noqa: E402,F401
