"""Exact, padding-free reward-model forward passes with torch: the engine of the transformers backend.

A row's score depends only on its own token ids: rows are packed end to end into one sequence with
per-row positions, attention never crosses a row boundary, and the score head reads each row's own last
token, so the score is never read at a pad token (a tokenizer whose pad falls back to EOS cannot move it).
Which rows share a forward pass changes nothing, bit for bit, once `fix_gemm_rows` runs every linear layer
at one fixed number of rows: BLAS kernels pick their code path and reduction order by the matrix shape (on
this CPU a 1- or 2-row product, and a score head over a row count not a multiple of 4, round differently),
and attention already runs per row. Without it (rm.batch_invariant_rows 0) the scores of one rollout in two
batch compositions differ in the last float bits, so a cached score would not equal a rescored one.

Packing computes exactly the real tokens (token efficiency 1.0); length-sorted padded batches compute
about 6% padding at a 65,536-token budget and arrival-order batches of 32 several times more
(benchmarks/rm_throughput.py). Models without a plain linear score head on a causal backbone (an encoder
RM that reads [CLS], say) run padded batches through the model's own forward instead.
"""

from __future__ import annotations

import inspect
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

PACKED_ATTENTION = "herolabel_packed"


def plan_packs(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices grouped into packs of at most `max_tokens` tokens in all and `max_rows` rows.

    Longest rows first, each pack filled in that order (next fit): the grouping depends only on the
    lengths, never on arrival order beyond ties (broken by index). A row longer than max_tokens gets a
    pack of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        size = max(lengths[i], 1)
        if current and (used + size > max_tokens or len(current) >= max_rows):
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        packs.append(current)
    return packs


def plan_padded_batches(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices grouped by similar length so that rows x longest stays under `max_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], 1)  # sorted ascending: the new row is the longest
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _varlen_kernel():
    """torch's flash varlen attention and the keyword that makes it causal, or None where it is absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                     **kwargs):
    """Causal attention within each packed row and none across rows (a transformers attention function).

    query (1, Hq, T, D), key/value (1, Hkv, T, D); kwargs carry `cu_seq_lens_q` (rows + 1 offsets, on the
    device) and `herolabel_bounds` (the same offsets as a tuple, so the CPU path needs no device sync).
    On CUDA, one flash varlen call per layer when this torch has it; elsewhere one SDPA call per row.
    Returns (1, T, Hq, D) as transformers expects.
    """
    import torch
    import torch.nn.functional as F

    bounds = kwargs.get("herolabel_bounds")
    if bounds is None:
        raise RuntimeError(f"attention {PACKED_ATTENTION!r} runs only on packed input (transforms.rm.packing.Scorer)")
    if sliding_window is not None:
        raise RuntimeError("packed attention does not implement sliding windows; such models use padded batches")
    groups = query.shape[1] // key.shape[1]
    kernel = _VARLEN if query.is_cuda else None
    if kernel is not None:
        varlen_attn, causal, has_gqa = kernel
        q = query[0].transpose(0, 1)
        k = key[0].transpose(0, 1)
        v = value[0].transpose(0, 1)
        if groups > 1 and not has_gqa:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        extra = {"enable_gqa": True} if groups > 1 and has_gqa else {}
        cu = kwargs["cu_seq_lens_q"]
        longest = kwargs["max_length_q"]
        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **causal, **extra)
        return out.unsqueeze(0), None
    pieces = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                             scale=scaling, enable_gqa=groups > 1)
              for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


_VARLEN = None
_REGISTERED = threading.Lock()
_registered = False


def register_packed_attention() -> None:
    """Adds packed_attention to transformers' attention registry (once per process)."""
    global _registered, _VARLEN
    with _REGISTERED:
        if _registered:
            return
        from transformers import AttentionInterface

        AttentionInterface.register(PACKED_ATTENTION, packed_attention)
        _VARLEN = _varlen_kernel()
        _registered = True


def use_varlen_kernel(enabled: bool) -> None:
    """Turns the CUDA varlen kernel off (per-row SDPA instead), e.g. after it failed its self-check."""
    global _VARLEN
    _VARLEN = _varlen_kernel() if enabled else None


def fix_gemm_rows(model, rows: int) -> int:
    """Makes every plain `torch.nn.Linear` in `model` multiply in chunks of exactly `rows` rows (the last
    chunk zero-padded), so a token's output never depends on how many other tokens share the pass; returns
    how many layers it changed. Costs about 5 % of a CPU forward at 512 rows (one more matmul call per
    chunk, the padding of the last chunk); not measured on a GPU, where larger chunks keep GEMMs efficient."""
    import types

    import torch
    import torch.nn.functional as F

    def fixed_rows_linear(layer, x):
        flat = x.reshape(-1, x.shape[-1])
        count = flat.shape[0]
        pad = (-count) % rows
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad, flat.shape[1])])
        out = torch.cat([F.linear(flat[i:i + rows], layer.weight, layer.bias) for i in range(0, flat.shape[0], rows)])
        return out[:count].reshape(*x.shape[:-1], out.shape[-1])

    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # subclasses (quantized layers) keep their own forward
            module.forward = types.MethodType(fixed_rows_linear, module)
            changed += 1
    return changed


def can_pack(model) -> bool:
    """Whether `model` is a causal backbone plus a linear score head over the last token (Llama, Qwen2/3,
    Mistral, Gemma, Phi-3 ... ForSequenceClassification), with no sliding-window layers."""
    import torch

    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "score", None)
    config = model.config
    # Sliding-window layers (Mistral-7B-v0.1, Phi-3-mini, Qwen2 with use_sliding_window) see only part of a
    # long row; packed attention does not implement that, so such models run padded batches.
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or []) or (
        getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True))
    layers = getattr(backbone, "layers", None)
    attention = getattr(layers[0], "self_attn", None) if layers else None
    return (isinstance(head, torch.nn.Linear) and not sliding and getattr(attention, "is_causal", False)
            and type(model).__name__.endswith("ForSequenceClassification"))


class DeviceOutOfMemory(RuntimeError):
    """Raised by a forward that ran out of accelerator memory (torch.OutOfMemoryError, normalized)."""


@dataclass
class Replica:
    """One model copy on one device; its lock serializes forward passes on it."""

    model: object
    device: str
    packed: bool
    lock: threading.Lock
    forwards: int = 0  # forward passes run on this copy


class Scorer:
    """Scores lists of token ids with one model copy per device.

    `score(rows)` returns float64 scores (NaN for a row that could not be scored even alone after
    out-of-memory halving) in row order. Work is split into packs (or padded batches) under
    `max_tokens` / `max_rows`; with several replicas, packs go round robin to the devices and run in
    parallel, each device one forward at a time. Token efficiency (real / computed tokens) is recorded in
    `computed_tokens` and `real_tokens`.
    """

    def __init__(self, replicas: list[Replica], pad_token_id: int, max_tokens: int, max_rows: int):
        import torch

        self._torch = torch
        self.replicas = replicas
        self.pad_token_id = pad_token_id
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.real_tokens = 0
        self.computed_tokens = 0
        self.forward_passes = 0
        self._stats_lock = threading.Lock()

    @property
    def packed(self) -> bool:
        return self.replicas[0].packed

    def plan(self, lengths: list[int]) -> list[list[int]]:
        planner = plan_packs if self.packed else plan_padded_batches
        return planner(lengths, self.max_tokens, self.max_rows)

    def score(self, rows: list[list[int]]) -> np.ndarray:
        scores = np.full(len(rows), np.nan)
        if not rows:
            return scores
        groups = self.plan([len(r) for r in rows])
        assignments: list[list[list[int]]] = [[] for _ in self.replicas]
        for n, group in enumerate(groups):
            assignments[n % len(self.replicas)].append(group)

        def run(replica: Replica, work: list[list[int]]):
            for group in work:
                scores[group] = self._with_backoff(replica, [rows[i] for i in group])

        if len(self.replicas) == 1:
            run(self.replicas[0], assignments[0])
        else:
            with ThreadPoolExecutor(len(self.replicas), thread_name_prefix="rm-replica") as pool:
                for future in [pool.submit(run, r, w) for r, w in zip(self.replicas, assignments) if w]:
                    future.result()
        return scores

    def _with_backoff(self, replica: Replica, batch: list[list[int]]) -> np.ndarray:
        """Runs a batch; out of memory halves it and retries, down to one row (NaN if that fails too)."""
        try:
            return self.forward(replica, batch)
        except DeviceOutOfMemory:
            pass  # retried below, outside the handler: its traceback would keep the failed pass's tensors alive
        if replica.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
        if len(batch) == 1:
            log.error("reward model ran out of memory on a single rollout of %d tokens", len(batch[0]))
            return np.array([np.nan])
        middle = len(batch) // 2
        return np.concatenate([self._with_backoff(replica, batch[:middle]),
                               self._with_backoff(replica, batch[middle:])])

    def forward(self, replica: Replica, batch: list[list[int]]) -> np.ndarray:
        """One forward pass over `batch` on `replica` (out-of-memory raised as DeviceOutOfMemory)."""
        torch = self._torch
        try:
            with replica.lock, torch.inference_mode():
                values = (self._forward_packed if replica.packed else self._forward_padded)(replica, batch)
        except torch.OutOfMemoryError as exc:
            raise DeviceOutOfMemory(str(exc)) from exc
        with self._stats_lock:
            self.forward_passes += 1
            replica.forwards += 1
            self.real_tokens += sum(len(r) for r in batch)
            self.computed_tokens += (sum(len(r) for r in batch) if replica.packed
                                     else len(batch) * max(len(r) for r in batch))
        return values

    def _forward_packed(self, replica: Replica, batch: list[list[int]]) -> np.ndarray:
        torch = self._torch
        model = replica.model
        lengths = [len(r) for r in batch]
        bounds = tuple(np.concatenate([[0], np.cumsum(lengths)]).tolist())
        flat = np.fromiter((t for r in batch for t in r), dtype=np.int64, count=bounds[-1])
        positions = np.concatenate([np.arange(n) for n in lengths])
        device = replica.device
        input_ids = torch.from_numpy(flat).to(device, non_blocking=True)[None]
        position_ids = torch.from_numpy(positions).to(device, non_blocking=True)[None]
        cu = torch.tensor(bounds, dtype=torch.int32).to(device, non_blocking=True)
        backbone = getattr(model, model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                          cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths),
                          herolabel_bounds=bounds).last_hidden_state[0]
        last = torch.tensor(bounds[1:], dtype=torch.long).to(device, non_blocking=True) - 1
        logits = model.score(hidden.index_select(0, last))
        return logits[:, 0].float().cpu().numpy().astype(np.float64)

    def _forward_padded(self, replica: Replica, batch: list[list[int]]) -> np.ndarray:
        """Right-padded batch through the model's own forward. Models that read the score at the last
        non-pad token find it by the pad id, so the pad id must occur in no row: a tokenizer whose pad is
        EOS, under a template that ends in EOS, would otherwise move the score one token back."""
        torch = self._torch
        longest = max(len(ids) for ids in batch)
        used = {t for ids in batch for t in ids}
        pad = self.pad_token_id
        if pad in used:
            pad = next(t for t in range(replica.model.config.get_text_config().vocab_size) if t not in used)
        replica.model.config.pad_token_id = pad
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        logits = replica.model(input_ids=input_ids.to(replica.device),
                               attention_mask=attention.to(replica.device)).logits
        return logits[:, 0].float().cpu().numpy().astype(np.float64)


def resolve_devices(device: str, cuda_count: int) -> list[str]:
    """The devices that get a model copy: "auto" is every visible GPU (one copy each), else the CPU;
    "cuda" every visible GPU; "cpu"; or an explicit comma list ("cuda:0,cuda:2", "cpu,cpu" for tests)."""
    if device == "auto":
        return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]
    if device == "cuda":
        if cuda_count == 0:
            raise RuntimeError("rm.device is 'cuda' but this worker sees no GPU (CUDA_VISIBLE_DEVICES, drivers?)")
        return [f"cuda:{i}" for i in range(cuda_count)]
    devices = [d.strip() for d in device.split(",") if d.strip()]
    for d in devices:
        if d.startswith("cuda") and (cuda_count == 0 or (":" in d and int(d.split(":")[1]) >= cuda_count)):
            raise RuntimeError(f"rm.device names {d} but this worker sees {cuda_count} GPU(s)")
    return devices


def check_varlen_kernel(replica: Replica, pad_token_id: int) -> None:
    """On CUDA, checks the varlen kernel against per-row SDPA on a two-row pack; turns it off if they
    disagree or it fails (a torch build whose flash kernel lacks a feature), logging why."""
    if not replica.device.startswith("cuda") or _VARLEN is None or not replica.packed:
        return
    scorer = Scorer([replica], pad_token_id, 1 << 20, 1 << 20)
    rows = [[3, 5, 7, 11, 13, 17, 19, 23], [29, 31, 37]]
    try:
        fast = scorer.forward(replica, rows)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use this kernel
        log.warning("flash varlen attention failed its self-check (%s); using per-row SDPA", exc)
        use_varlen_kernel(False)
        return
    use_varlen_kernel(False)
    slow = scorer.forward(replica, rows)
    if np.allclose(fast, slow, atol=5e-2, rtol=5e-2):
        use_varlen_kernel(True)
    else:
        log.warning("flash varlen attention disagrees with per-row SDPA (%s vs %s); using per-row SDPA", fast, slow)
