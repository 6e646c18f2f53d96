"""Synthetic rollouts and a tiny random reward model, built offline, for the demo, tests and benchmarks.

Rollouts imitate real model outputs (see ../shared/data): GSM8K-style "A: 26" endings, \\boxed{} answers,
\\(...\\) answers, LaTeX fractions and expressions; a mix of right, wrong and answer-free responses.
The reward model is a 2-layer Qwen2 sequence classifier with random weights and a byte-level BPE
tokenizer trained on the synthetic text: meaningless scores, but real tokenization, chat template,
batching and forward passes. Building it takes about a second.
"""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

# Qwen2's pre-tokenizer split pattern: a PreTrainedTokenizerFast saved with model_type qwen2 reloads as
# Qwen2Tokenizer, which installs this pattern; training with it keeps token ids identical after reload.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
)

_NAMES = ["Janet", "Tom", "Aisha", "Luis", "Mei", "Olga", "Ravi", "Sam"]
_ITEMS = ["apples", "marbles", "stickers", "books", "eggs", "coins"]


def _question(rng: random.Random, index: int):
    """(prompt, reference, LaTeX-ish correct answer, plain correct answer, wrong answer) for one problem."""
    kind = index % 4
    if kind == 0:
        a, b, c = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 9)
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        answer = (a + b) * c
        prompt = (f"{name} has {a} {item} and buys {b} more. Each of {name}'s {c} cousins then brings exactly "
                  f"as many {item} as {name} has. How many {item} do the {c} cousins bring altogether?")
        return prompt, str(answer), str(answer), str(answer), str(answer + rng.choice([-c, c, 1, 10]))
    if kind == 1:
        p, q, r, s = rng.randint(1, 9), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 12)
        from fractions import Fraction

        value = Fraction(p, q) + Fraction(r, s)
        wrong = value + Fraction(1, q * s)
        prompt = f"What is $\\frac{{{p}}}{{{q}}} + \\frac{{{r}}}{{{s}}}$? Express your answer as a common fraction."
        latex = f"\\frac{{{value.numerator}}}{{{value.denominator}}}" if value.denominator != 1 else str(value.numerator)
        wrong_latex = f"\\frac{{{wrong.numerator}}}{{{wrong.denominator}}}"
        return prompt, latex, latex, f"{value.numerator}/{value.denominator}", wrong_latex
    if kind == 2:
        a, x, b = rng.randint(2, 9), rng.randint(-12, 12), rng.randint(1, 30)
        prompt = f"Solve for $x$: ${a}x + {b} = {a * x + b}$."
        return prompt, str(x), f"x = {x}", str(x), f"x = {x + rng.choice([-2, -1, 1, 2])}"
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    prompt = f"Expand $(x + {a})(x + {b})$."
    expanded = f"x^2 + {a + b}x + {a * b}"
    return prompt, expanded, expanded, expanded, f"x^2 + {a * b}x + {a + b}"


def _response(rng: random.Random, style: int, latex: str, plain: str, steps: str) -> str:
    if style == 0:
        return f"{steps}\nA: {plain}"
    if style == 1:
        return f"{steps}\n\nTherefore, the final answer is $\\boxed{{{latex}}}$."
    if style == 2:
        return f"{steps} So the answer is \\({latex}\\)."
    return f"Let's think step by step. {steps}\nThe answer is \\[\\boxed{{{latex}}}\\]"


_NO_ANSWER = [
    "I am not able to work out this problem from the information given.",
    "Let's think about it. The problem is unclear to me, so I will stop here.",
    "Hmm, this one needs more context before it can be solved.",
]


def synthetic_rollouts(num_rows: int, responses_per_prompt: int = 8, seed: int = 0, *,
                       missing_reference_every: int = 0, bad_rows: int = 0) -> pa.Table:
    """A table of `num_rows` rollouts in the canonical long format, deterministic for a given seed.

    About 55% of responses are correct, 35% wrong, 10% without an answer. Every
    `missing_reference_every`-th prompt has a null reference (0 = never); `bad_rows` rows get a null
    response so they land in the errors output.
    """
    rng = random.Random(seed)
    rows = {"prompt_id": [], "prompt": [], "response": [], "reference": [], "data_source": [], "sample_index": []}
    prompt_index = 0
    while len(rows["response"]) < num_rows:
        prompt, reference, latex, plain, wrong = _question(rng, prompt_index)
        if missing_reference_every and prompt_index % missing_reference_every == missing_reference_every - 1:
            reference = None
        for sample in range(min(responses_per_prompt, num_rows - len(rows["response"]))):
            draw = rng.random()
            filler = " ".join(f"Step {i + 1}: we combine the quantities {rng.randint(1, 99)} and "
                              f"{rng.randint(1, 99)} as the problem says." for i in range(rng.randint(2, 6)))
            style = rng.randrange(4)
            if draw < 0.55:
                text = _response(rng, style, latex, plain, filler)
            elif draw < 0.90:
                text = _response(rng, style, wrong, wrong.replace("\\frac{", "").replace("}{", "/").strip("}"), filler)
            else:
                text = rng.choice(_NO_ANSWER)
            rows["prompt_id"].append(f"synthetic-{seed}-{prompt_index}")
            rows["prompt"].append(prompt)
            rows["response"].append(text)
            rows["reference"].append(reference)
            rows["data_source"].append(["arith", "fractions", "linear", "algebra"][prompt_index % 4])
            rows["sample_index"].append(sample)
        prompt_index += 1
    for i in rng.sample(range(num_rows), min(bad_rows, num_rows)):
        rows["response"][i] = None
    return pa.table(rows, schema=pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
        ("reference", pa.string()), ("data_source", pa.string()), ("sample_index", pa.int32())]))


def write_synthetic_rollouts(path: str, num_rows: int, *, rows_per_file: int | None = None,
                             row_group_size: int = 8192, **kwargs) -> list[str]:
    """Writes synthetic rollouts to `path` (a file, or a directory of part files when rows_per_file is set)."""
    table = synthetic_rollouts(num_rows, **kwargs)
    if rows_per_file is None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group_size)
        return [path]
    os.makedirs(path, exist_ok=True)
    paths = []
    for index, start in enumerate(range(0, num_rows, rows_per_file)):
        part = os.path.join(path, f"rollouts-{index:05d}.parquet")
        pq.write_table(table.slice(start, rows_per_file), part, row_group_size=row_group_size)
        paths.append(part)
    return paths


def build_tiny_reward_model(path: str, seed: int = 0, vocab_size: int = 600) -> str:
    """Saves a random 2-layer Qwen2 reward model (num_labels=1) and its tokenizer to `path`, offline."""
    return _build_tiny_qwen2(path, seed, vocab_size, causal_lm=False)


def build_tiny_causal_lm(path: str, seed: int = 0, vocab_size: int = 600) -> str:
    """Saves a random 2-layer Qwen2 causal LM (a stand-in judge: its replies are noise) and its tokenizer."""
    return _build_tiny_qwen2(path, seed, vocab_size, causal_lm=True)


def _build_tiny_qwen2(path: str, seed: int, vocab_size: int, causal_lm: bool) -> str:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    texts = list(synthetic_rollouts(400, seed=seed).column("response").to_pylist())
    texts += list(synthetic_rollouts(400, seed=seed).column("prompt").to_pylist())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=special[1:])
    fast.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=4096, num_labels=1, pad_token_id=fast.pad_token_id,
                         eos_token_id=fast.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if causal_lm:
        model = Qwen2ForCausalLM(config)
    else:
        model = Qwen2ForSequenceClassification(config)
        # Random init gives near-identical scores; widen the score head so rollouts get distinct rewards.
        with torch.no_grad():
            model.score.weight.normal_(0.0, 1.0)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
