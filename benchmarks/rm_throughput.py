"""Reward-model scoring throughput: the pipeline's scorer against a naive baseline, same model, same rows.

    python benchmarks/rm_throughput.py                       # CPU: random Qwen2, hidden 256, 4 layers
    python benchmarks/rm_throughput.py --shape qwen2-7b      # GPU: random 7B-shaped Qwen2 in bf16

Rollouts (fixed defaults): 1,024 rows, seed 0, prompts of 60-300 tokens, responses lognormal around 750
tokens capped at 4,096, rendered with the RM's chat template. Both sides are timed from text to scores,
tokenization included, in one process:
- pipeline: TransformersRewardModel.score_table on an Arrow table (batched tokenization, rows packed
  padding-free up to --max-tokens real tokens per forward, attention kept inside each row);
- naive: fixed batches of 32 in arrival order, tokenized per batch and padded to the batch's longest row,
  through the model's own forward with an attention mask.
On a GPU it also measures the ceiling: equal-length rows with no mask (--ceiling-lengths, 64k tokens per
forward) through the model's own forward; MFU = 2 x parameters x real tokens/s / --peak-flops (H100
dense bf16). With vLLM importable, it times the vllm backend on the same rows too.

Prints one JSON line: rows, tokens, pipeline_tok_per_s, naive_tok_per_s, ratio, token_efficiency
(real tokens / tokens computed, padding included), max_abs_diff (pipeline vs naive scores), and on a GPU
device, mfu, ceiling_tok_per_s, ceiling_mfu, ratio_to_ceiling.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.rm import packing  # noqa: E402
from transforms.rm import RewardModelConfig  # noqa: E402
from transforms.rm.transformers import TransformersRewardModel  # noqa: E402
from transforms.rm.hub import encode_rollouts  # noqa: E402

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, rope_theta=1e6),
}


def build_tokenizer(path: str):
    """The demo's byte-level BPE tokenizer with a Qwen-style chat template (built offline)."""
    from transformers import AutoTokenizer

    from pipeline.tools.demo import build_tiny_reward_model

    build_tiny_reward_model(path, seed=0)
    return AutoTokenizer.from_pretrained(path)


def make_rollouts(tokenizer, rows: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts of 60-300 tokens and responses lognormal around 750 tokens (capped at 4,096) of random text."""
    rng = np.random.default_rng(seed)
    # Whole words with a leading space that tokenize back to themselves: n of them are exactly n tokens.
    words = []
    for i in range(len(tokenizer)):
        word = tokenizer.decode([i])
        if word.startswith(" ") and word[1:].isalpha() and tokenizer(word, add_special_tokens=False)["input_ids"] == [i]:
            words.append(word)
    words = np.array(words)

    def text(n: int) -> str:
        return "".join(rng.choice(words, size=n).tolist())

    prompt_lengths = rng.integers(60, 301, size=rows)
    response_lengths = np.minimum(rng.lognormal(np.log(750), 0.6, size=rows).astype(int) + 1, 4096)
    return [text(int(n)) for n in prompt_lengths], [text(int(n)) for n in response_lengths]


def build_model(shape: str, vocab_size: int, device: str, dtype: str, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    params = dict(SHAPES[shape])
    params.setdefault("vocab_size", vocab_size)
    config = Qwen2Config(**params, num_labels=1, max_position_embeddings=32768, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = Qwen2ForSequenceClassification(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def set_attention(model, name: str) -> None:
    model.config._attn_implementation = name


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_pipeline(backend: TransformersRewardModel, table: pa.Table, device: str) -> tuple[float, np.ndarray]:
    sync(device)
    started = time.perf_counter()
    scores = backend.score_table(table).column("rm_score").to_numpy(zero_copy_only=False)
    sync(device)
    return time.perf_counter() - started, scores.astype(np.float64)


def time_naive(model, tokenizer, prompts, responses, max_length: int, device: str, batch: int = 32):
    """Fixed batches of `batch` in arrival order, tokenized per batch, padded to the batch's longest row."""
    import torch

    scores, computed = [], 0
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(prompts), batch):
        ids, _, _ = encode_rollouts(tokenizer, prompts[start:start + batch], responses[start:start + batch],
                                    max_length, "left")
        longest = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, r in enumerate(ids):
            input_ids[row, :len(r)] = torch.tensor(r)
            mask[row, :len(r)] = 1
        computed += input_ids.numel()
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        scores.append(logits[:, 0].float().cpu().numpy())
    sync(device)
    return time.perf_counter() - started, np.concatenate(scores).astype(np.float64), computed


def time_ceiling(model, device: str, length: int, tokens_per_batch: int, batches: int, vocab: int):
    """Equal-length random rows, no mask, the model's own forward: tokens/s with zero padding."""
    import torch

    rows = max(1, tokens_per_batch // length)
    generator = torch.Generator().manual_seed(1)
    data = [torch.randint(1, vocab, (rows, length), generator=generator).to(device) for _ in range(batches + 1)]
    with torch.inference_mode():
        model(input_ids=data[0])  # warm-up
        sync(device)
        started = time.perf_counter()
        for x in data[1:]:
            model(input_ids=x)
        sync(device)
    return rows * length * batches / (time.perf_counter() - started)


def time_vllm(model, tokenizer, table: pa.Table, args, dtype: str, device: str) -> dict:
    """The vllm backend on the same rows (model saved to a temporary directory; load and warm-up untimed)."""
    from transforms.rm import make_reward_model

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        backend = make_reward_model(RewardModelConfig(
            backend="vllm", model=directory, max_length=args.max_length, dtype=dtype,
            device="cpu" if device == "cpu" else "auto"))
        backend.load()
        try:
            backend.score_table(table.slice(0, 8))
            sync(device)
            started = time.perf_counter()
            scores = backend.score_table(table).column("rm_score").to_numpy(zero_copy_only=False)
            sync(device)
            return time.perf_counter() - started, scores.astype(np.float64)
        finally:
            backend.close()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--max-tokens", type=int, default=65536, help="the pipeline's token budget per forward")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--naive-batch", type=int, default=32)
    parser.add_argument("--ceiling-lengths", default="1024,4096", help="GPU only; empty to skip")
    parser.add_argument("--ceiling-batches", type=int, default=6)
    parser.add_argument("--peak-flops", type=float, default=989e12, help="H100 SXM dense bf16")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side; the best is reported")
    parser.add_argument("--sides", default="pipeline,naive,ceiling,vllm",
                        help="which measurements to take (vllm: when vLLM is installed)")
    parser.add_argument("--batch-invariant-rows", type=int, default=0,
                        help="the pipeline side's rm.batch_invariant_rows (0: whole-pack GEMMs, as the recorded "
                             "figures were measured; the pipeline's default is 512)")
    parser.add_argument("--attention", choices=("auto", "sdpa-per-row"), default="auto",
                        help="packed attention kernel on CUDA: flash varlen when available, or one SDPA call per row")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
    prompts, responses = make_rollouts(tokenizer, args.rows, args.seed)
    table = pa.table({"prompt": prompts, "response": responses})
    model = build_model(args.shape, len(tokenizer), device, dtype, args.seed)
    parameters = sum(p.numel() for p in model.parameters())

    config = RewardModelConfig(backend="transformers", model="in-memory", max_length=args.max_length,
                               max_tokens_per_batch=args.max_tokens, max_batch_size=4096, device=device,
                               batch_invariant_rows=args.batch_invariant_rows)
    backend = TransformersRewardModel(config)
    backend.attach([backend._replica(model, device)], tokenizer)
    if args.attention == "sdpa-per-row":
        packing.use_varlen_kernel(False)
    sides = set(args.sides.split(","))
    log(f"model built: {args.shape} on {device} ({dtype}); varlen kernel: {packing._VARLEN is not None}")
    backend.score_table(table.slice(0, 16))  # warm-up (kernels, allocator)
    scorer = backend.scorer
    pipeline_s, pipeline_scores = min((time_pipeline(backend, table, device) for _ in range(args.repeats)),
                                      key=lambda r: r[0])
    real, computed = scorer.real_tokens, scorer.computed_tokens  # includes the warm-up and all repeats
    ids, _, _ = encode_rollouts(tokenizer, prompts, responses, args.max_length, "left")
    tokens = sum(len(r) for r in ids)

    result = {
        "rows": args.rows, "tokens": tokens, "shape": args.shape, "dtype": dtype, "max_tokens": args.max_tokens,
        "parameters": parameters, "attention": args.attention,
        "batch_invariant_rows": args.batch_invariant_rows, "varlen_kernel": packing._VARLEN is not None,
        "pipeline_s": round(pipeline_s, 3), "pipeline_tok_per_s": round(tokens / pipeline_s, 1),
        "token_efficiency": round(real / computed, 4),
        "sorted_padded_token_efficiency": round(padded_efficiency(ids, args.max_tokens), 4),
        "packed": scorer.packed,
    }
    if device.startswith("cuda"):
        result["device"] = torch.cuda.get_device_name()
        result["mfu"] = round(2 * parameters * tokens / pipeline_s / args.peak_flops, 4)
    log(json.dumps(result))
    set_attention(model, "sdpa")
    if "naive" in sides:
        result.update(naive(model, tokenizer, prompts, responses, args, device, tokens, parameters, pipeline_s,
                            pipeline_scores))
        log(json.dumps(result))
    if device.startswith("cuda") and "ceiling" in sides:
        for length in [int(x) for x in args.ceiling_lengths.split(",") if x]:
            gc.collect()
            torch.cuda.empty_cache()
            rate = time_ceiling(model, device, length, args.max_tokens, args.ceiling_batches, len(tokenizer))
            result[f"ceiling_{length}_tok_per_s"] = round(rate, 1)
            result[f"ceiling_{length}_mfu"] = round(2 * parameters * rate / args.peak_flops, 4)
            log(json.dumps(result))
        first = [x for x in args.ceiling_lengths.split(",") if x]
        if first:
            result["ratio_to_ceiling"] = round(result["pipeline_tok_per_s"] / result[f"ceiling_{first[0]}_tok_per_s"],
                                               4)
    if "vllm" in sides:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep stdout to the one JSON line
        try:
            import vllm  # noqa: F401
        except ImportError:
            result["vllm"] = "not installed"
        else:
            set_attention(model, "sdpa")
            vllm_s, vllm_scores = time_vllm(model, tokenizer, table, args, dtype, device)
            result.update({"vllm_s": round(vllm_s, 3), "vllm_tok_per_s": round(tokens / vllm_s, 1),
                           "vllm_max_abs_diff": float(np.max(np.abs(vllm_scores - pipeline_scores)))})
    print(json.dumps(result), flush=True)
    return result


def log(message: str) -> None:
    print(f"[rm_throughput {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def naive(model, tokenizer, prompts, responses, args, device, tokens, parameters, pipeline_s, pipeline_scores) -> dict:
    time_naive(model, tokenizer, prompts[:args.naive_batch], responses[:args.naive_batch], args.max_length, device,
               args.naive_batch)  # warm-up
    naive_s, naive_scores, naive_computed = min(
        (time_naive(model, tokenizer, prompts, responses, args.max_length, device, args.naive_batch)
         for _ in range(args.repeats)), key=lambda r: r[0])
    result = {
        "naive_s": round(naive_s, 3), "naive_tok_per_s": round(tokens / naive_s, 1),
        "ratio": round(naive_s / pipeline_s, 3), "naive_token_efficiency": round(tokens / naive_computed, 4),
        "max_abs_diff": float(np.max(np.abs(pipeline_scores - naive_scores))),
    }
    if device.startswith("cuda"):
        result["naive_mfu"] = round(2 * parameters * tokens / naive_s / args.peak_flops, 4)
    return result


def padded_efficiency(ids, max_tokens: int) -> float:
    """What length-sorted padded batches under the same budget would compute (for comparison)."""
    lengths = [len(r) for r in ids]
    batches = packing.plan_padded_batches(lengths, max_tokens, 1 << 20)
    return sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)


if __name__ == "__main__":
    main()
