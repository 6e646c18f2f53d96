"""Backend "transformers": a sequence-classification RM run with torch, packed padding-free (packing.py)."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pyarrow as pa

from schemas.rollouts import PROMPT, RESPONSE, RmStatus
from transforms.rm import RewardModelConfig, rm_columns
from transforms.rm.hub import ModelFromHub, encode_rollouts

log = logging.getLogger(__name__)


class TransformersRewardModel(ModelFromHub):
    """Backend "transformers": a sequence-classification RM with one output, run with torch.

    Causal RMs with a linear score head (Llama, Qwen, Mistral, Gemma ... ForSequenceClassification) run
    padding-free: rows packed up to max_tokens_per_batch real tokens per forward, attention kept inside
    each row and every linear layer at a fixed row count (transforms/rm/packing.py), so a row's score is the
    same bits whatever shares its batch. bf16 + flash
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
        from transforms.rm import packing

        transformers_logging.disable_progress_bar()  # per-shard loading bars would drown the run's progress line
        config = self.config
        devices = packing.resolve_devices(config.device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        on_gpu = devices[0].startswith("cuda")
        self.dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        dtype = getattr(torch, self.dtype_name)
        local = os.path.isdir(config.model)
        tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision, local_files_only=local)
        packing.register_packed_attention()
        replicas = []
        for device in devices:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                config.model, revision=config.revision, local_files_only=local, dtype=dtype,
                attn_implementation="sdpa", output_loading_info=True)
            if loading["missing_keys"]:  # the driver checked the head; the files changed since
                raise ValueError(f"rm.model {config.model!r}: weights missing from the checkpoint would be random: "
                                 f"{', '.join(sorted(loading['missing_keys']))}")
            replicas.append(self._replica(model, device))
        self.attach(replicas, tokenizer)

    def _replica(self, model, device: str):
        """A model moved to `device` for scoring: packed attention when its architecture allows it."""
        import threading as _threading

        from transforms.rm import packing

        if model.config.num_labels != 1:
            raise ValueError(f"reward model has num_labels={model.config.num_labels}; a reward model must have "
                             "exactly one output")
        packed = packing.can_pack(model)
        if self.config.batch_invariant_rows:
            packing.fix_gemm_rows(model, self.config.batch_invariant_rows)
        if packed:
            packing.register_packed_attention()
            model.config._attn_implementation = packing.PACKED_ATTENTION
        return packing.Replica(model.to(device).eval(), device, packed, _threading.Lock())

    def attach(self, replicas, tokenizer) -> None:
        """Uses already-built model copies (load() calls this; a benchmark with an in-memory model too)."""
        from transforms.rm import packing

        if tokenizer.pad_token_id is None:
            # Only the padded path reads it, and it reads scores by length, never by pad position.
            tokenizer.pad_token = tokenizer.eos_token
        for replica in replicas:
            replica.model.config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        if self.dtype_name is None:
            self.dtype_name = str(next(replicas[0].model.parameters()).dtype).removeprefix("torch.")
        self.scorer = packing.Scorer(replicas, tokenizer.pad_token_id, self.config.max_tokens_per_batch,
                                      self.config.max_batch_size)
        packing.check_varlen_kernel(replicas[0], tokenizer.pad_token_id)
        if not getattr(tokenizer, "chat_template", None) and not self._warned_no_template:
            log.warning("reward model tokenizer has no chat template; scoring 'prompt\\n\\nresponse'")
            self._warned_no_template = True

    # Kept free on a GPU beside the models for activations when deciding whether another model fits.
    ACTIVATION_RESERVE = 0.10

    def _on_gpu(self) -> list:
        return [r for r in self.scorer.replicas if r.device.startswith("cuda")] if self.scorer else []

    def room_for_another(self) -> bool:
        """Whether every device holding a copy has free memory for one more model of this one's size, with
        ACTIVATION_RESERVE of the device kept free (measured now, after this model loaded). The CPU: always
        (host memory is where a parked model would wait anyway)."""
        import torch

        for replica in self._on_gpu():
            size = sum(t.numel() * t.element_size() for t in (*replica.model.parameters(), *replica.model.buffers()))
            free, total = torch.cuda.mem_get_info(torch.device(replica.device))
            if free - size < self.ACTIVATION_RESERVE * total:
                return False
        return True

    def park(self) -> None:
        """Moves the model copies on GPUs to host memory (about 1 s per 15 GB over PCIe), freeing the devices."""
        import torch

        replicas = self._on_gpu()
        for replica in replicas:
            replica.model.to("cpu")
        if replicas:
            torch.cuda.empty_cache()

    def unpark(self) -> None:
        for replica in self._on_gpu():
            replica.model.to(replica.device)

    def cache_identity(self) -> dict:
        """Scores multiplied at another fixed row count (or whole packs) differ in the last bits: a namespace each."""
        return {**super().cache_identity(), "batch_invariant_rows": self.config.batch_invariant_rows}

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
