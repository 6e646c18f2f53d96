"""What the backends that run a model from rm.model share: model resolution and its identity (hub commit or
full-content digest), and rendering plus tokenization of rollouts exactly as the RM reads them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading


from transforms.rm import RewardBackend, RewardModelConfig

log = logging.getLogger(__name__)


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
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"rm.model {name!r} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    check_head(name, config.revision, local, model_config)  # first: a policy checkpoint is the common mistake
    try:
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


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def checkpoint_weight_names(name: str, revision: str | None, local: bool) -> set[str] | None:
    """Every weight name stored in the checkpoint, from its index or file headers (no tensor is loaded, and
    for a hub id nothing is downloaded: the files already cached, else the hub's safetensors headers by
    range requests); None when they cannot be read (the worker's load checks the weights then)."""
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        if local:
            path = os.path.join(name, filename)
            return path if os.path.exists(path) else None
        return cached_file(name, filename, revision=revision, local_files_only=True,
                           _raise_exceptions_for_missing_entries=False)

    try:
        for index in WEIGHT_INDEXES:
            path = find(index)
            if path:
                with open(path) as handle:
                    return set(json.load(handle)["weight_map"])
        path = find("model.safetensors")
        if path:
            from safetensors import safe_open

            with safe_open(path, framework="np") as handle:
                return set(handle.keys())
        path = find("pytorch_model.bin")
        if path:
            import torch

            return set(torch.load(path, map_location="meta", weights_only=True, mmap=True))
        if not local and not os.environ.get("HF_HUB_OFFLINE"):
            from huggingface_hub import get_safetensors_metadata

            metadata = get_safetensors_metadata(name, revision=revision)
            return {key for file in metadata.files_metadata.values() for key in file.tensors}
    except Exception as exc:  # noqa: BLE001 - an unreadable index or header: the worker's load-time check decides
        log.info("cannot list the weights of %s before loading (%s: %s)", name, type(exc).__name__, exc)
    return None


def check_head(name: str, revision: str | None, local: bool, model_config) -> None:
    """Raises ValueError naming rm.model when the checkpoint lacks a weight of the sequence-classification
    head the backends would build (`score.weight` for a Llama/Qwen RM): transformers would initialize it
    at random and only log it, so every row would get a random score with rm_status ok. A policy
    checkpoint (a causal LM) given as the RM is the usual case. The head's names come from the model
    built on the meta device (no memory, about 0.1 s for a 7B shape); the checkpoint's from its index. A
    name counts as stored with or without the base model's prefix (`model.score.weight`), as transformers
    loads it either way."""
    stored = checkpoint_weight_names(name, revision, local)
    if stored is None:
        return
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(model_config)
    except (ValueError, KeyError) as exc:  # an architecture without a sequence-classification class
        raise ValueError(f"rm.model {name!r} is not a sequence-classification reward model ({exc})") from exc
    prefix = f"{skeleton.base_model_prefix}."
    head = [key for key in skeleton.state_dict() if not key.startswith(prefix)]
    missing = [key for key in head if key not in stored and prefix + key not in stored]
    if missing:
        architectures = ", ".join(getattr(model_config, "architectures", None) or ["unknown"])
        raise ValueError(f"rm.model {name!r} has no reward head: the checkpoint lacks {', '.join(missing)} "
                         f"(its architecture: {architectures}). A policy or base checkpoint cannot score; "
                         "give a sequence-classification reward model with one output")


class ModelFromHub(RewardBackend):
    """What the backends that run a model from rm.model (transformers, vllm) share: the identity resolved
    on the driver before any data moves, and the cache identity once load() has resolved the dtype."""

    backend_name = ""
    needs_accelerator = True
    runs_model = True

    def __init__(self, config: RewardModelConfig):
        self.config = config
        self.tokenizer = None
        self.dtype_name: str | None = None  # set by load()
        self._identity = None

    @classmethod
    def check_config(cls, config: RewardModelConfig) -> None:
        super().check_config(config)
        if not config.model:
            raise ValueError(f"rm.model is required with rm.backend={config.backend} (a local path or a hub id)")

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
