"""Reward-model backends, with a real (tiny, random) transformers model built offline."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from schemas.rollouts import CHAT_PROMPT
from transforms.rm import RewardModelConfig, make_reward_model
from transforms.rm.packing import plan_packs, plan_padded_batches


@pytest.mark.parametrize("lengths,max_tokens,max_batch", [
    ([5, 1, 9, 3, 7], 20, 8),  # mixed lengths under a token budget
    ([10] * 9, 30, 2),  # batch-size cap binds before the budget
    ([100, 1, 1, 1], 100, 64),  # one long row fills a batch on its own
    ([], 10, 4),  # nothing to do
])
def test_batch_plans_respect_budget_and_cover_every_row(lengths, max_tokens, max_batch):
    padded = plan_padded_batches(lengths, max_tokens, max_batch)
    packs = plan_packs(lengths, max_tokens, max_batch)
    for plan in (padded, packs):
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        assert all(len(batch) <= max_batch for batch in plan)
    for batch in padded:  # rows x longest under the budget (a row longer than it alone)
        assert len(batch) * max(lengths[i] for i in batch) <= max(max_tokens, max(lengths[i] for i in batch))
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)
    for pack in packs:  # real tokens under the budget (a row longer than it alone)
        assert sum(max(lengths[i], 1) for i in pack) <= max(max_tokens, max(lengths[i] for i in pack))
    assert plan_packs(lengths, max_tokens, max_batch) == packs  # decided by the lengths alone


@pytest.fixture(scope="module")
def tiny_rm(tiny_rm_path):
    model = make_reward_model(RewardModelConfig(backend="transformers", model=tiny_rm_path, max_tokens_per_batch=4096,
                                                max_length=256))
    model.load()
    return model


def rollouts(n=6):
    from pipeline.tools.demo import synthetic_rollouts

    return synthetic_rollouts(n, seed=3)


def test_batched_scores_equal_one_by_one_scores(tiny_rm):
    table = rollouts(12)
    batched = tiny_rm.score_table(table).column("rm_score").to_pylist()
    single = [tiny_rm.score_table(table.slice(i, 1)).column("rm_score")[0].as_py() for i in range(table.num_rows)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 4) for s in batched)) > 1  # the model distinguishes rollouts


def test_chat_template_frames_prompt_and_response(tiny_rm):
    ids, truncated, errors = tiny_rm.encode(["What is 2+2?"], ["4"])
    text = tiny_rm.tokenizer.decode(ids[0])
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert truncated == [False] and errors == [None]


def test_long_rollouts_are_truncated_and_reported(tiny_rm_path):
    model = make_reward_model(RewardModelConfig(backend="transformers", model=tiny_rm_path, max_length=40,
                                                max_tokens_per_batch=160))
    model.load()
    table = pa.table({"prompt": ["q", "q"], "response": ["short", "word " * 200]})
    out = model.score_table(table)
    assert out.column("rm_status").to_pylist() == ["ok", "truncated"]
    assert all(math.isfinite(s) for s in out.column("rm_score").to_pylist())
    ids, truncated, _ = model.encode(["q"], ["word " * 200])
    assert truncated == [True] and len(ids[0]) == 40
    assert model.tokenizer.decode(ids[0]).endswith("<|im_end|>\n")  # left truncation keeps the response end


def test_chat_message_prompts_are_scored(tiny_rm):
    chat = pa.array([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]], CHAT_PROMPT)
    out = tiny_rm.score_table(pa.table({"prompt": chat, "response": ["4"]}))
    assert out.column("rm_status").to_pylist() == ["ok"]
    ids, _, _ = tiny_rm.encode([chat.to_pylist()[0]], ["4"])
    assert tiny_rm.tokenizer.decode(ids[0]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_identity_fingerprints_local_weights(tiny_rm, tiny_rm_path):
    identity = tiny_rm.identity()
    assert identity["backend"] == "transformers" and identity["name"] == tiny_rm_path
    assert len(identity["fingerprint"]) == 32 and identity["fingerprint"] == tiny_rm.identity()["fingerprint"]


def test_precomputed_scores_and_missing_values():
    model = make_reward_model(RewardModelConfig(backend="precomputed", score_column="s"))
    table = pa.table({"s": pa.array([1.5, None, float("nan"), -2.0])})
    out = model.score_table(table)
    assert out.column("rm_score").to_pylist() == [1.5, None, None, -2.0]
    assert out.column("rm_status").to_pylist() == ["ok", "missing", "missing", "ok"]
    assert out.schema.field("rm_score").type == pa.float32()


@pytest.mark.parametrize("schema,message", [
    (pa.schema([("other", pa.float64())]), "is not an input column"),
    (pa.schema([("s", pa.string())]), "expected a number"),
])
def test_precomputed_column_checked_before_running(schema, message):
    model = make_reward_model(RewardModelConfig(backend="precomputed", score_column="s"))
    with pytest.raises(ValueError, match=message):
        model.check_schema(schema)


def test_backend_none_marks_rows_skipped():
    out = make_reward_model(RewardModelConfig(backend="none")).score_table(pa.table({"x": [1, 2]}))
    assert out.column("rm_score").to_pylist() == [None, None]
    assert out.column("rm_status").to_pylist() == ["skipped", "skipped"]


@pytest.mark.parametrize("kwargs,message", [
    ({"backend": "vllm"}, "rm.model is required"),
    ({"backend": "bogus"}, "rm.backend"),
    ({"backend": "none", "gpu_memory_utilization": 1.5}, "rm.gpu_memory_utilization"),
    ({"backend": "none", "device": "cuda:x"}, "rm.device"),
    ({"backend": "vllm", "model": "m", "device": "cuda:1"}, "rm.device"),  # vLLM places its model itself
    ({"backend": "transformers"}, "rm.model is required"),
    ({"backend": "precomputed"}, "rm.score_column is required"),
    ({"backend": "none", "max_length": 0}, "rm.max_length"),
    ({"backend": "none", "max_length": 100, "max_tokens_per_batch": 50}, "rm.max_tokens_per_batch"),
    ({"backend": "none", "device": "tpu"}, "rm.device"),
])
def test_invalid_rm_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardModelConfig(**kwargs)


def test_scores_are_deterministic_across_loads(tiny_rm_path, tiny_rm):
    again = make_reward_model(RewardModelConfig(backend="transformers", model=tiny_rm_path, max_length=256,
                                                max_tokens_per_batch=4096))
    again.load()
    table = rollouts(4)
    np.testing.assert_allclose(again.score_table(table).column("rm_score").to_numpy(),
                               tiny_rm.score_table(table).column("rm_score").to_numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def causal_lm_path(tmp_path_factory, tiny_rm_path):
    """A policy checkpoint as a user would mistake it for an RM: the tiny RM's body and tokenizer saved as
    Qwen2ForCausalLM (an lm_head, no score head), its config even claiming one label."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    path = str(tmp_path_factory.mktemp("causal_lm"))
    config = AutoConfig.from_pretrained(tiny_rm_path)
    config.architectures = ["Qwen2ForCausalLM"]
    Qwen2ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_rm_path).save_pretrained(path)
    return path


@pytest.mark.parametrize("backend", ["transformers", "vllm"])  # every backend that loads a model
def test_a_checkpoint_without_the_reward_head_stops_the_run_before_any_data_moves(backend, causal_lm_path, tmp_path):
    from conftest import label
    from pipeline.config import ConfigError
    from pipeline.tools.demo import write_synthetic_rollouts

    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16)
    with pytest.raises(ConfigError) as failure:
        label(tmp_path / "in.parquet", tmp_path / "out", rm_model=causal_lm_path, rm_backend=backend)
    message = str(failure.value)
    assert "--rm-model" in message and "score.weight" in message and "Qwen2ForCausalLM" in message, message
    assert not (tmp_path / "out").exists()  # refused while planning: nothing written, nothing scored


def test_the_worker_refuses_weights_missing_at_load_time(causal_lm_path):
    # The driver's check can be bypassed only by a checkpoint changing after it; the load checks again.
    model = make_reward_model(RewardModelConfig(backend="transformers", model=causal_lm_path, device="cpu"))
    with pytest.raises(ValueError, match="score.weight"):
        model.load()


def _resaved(tiny_rm_path: str, path: str, how: str) -> str:
    """The tiny RM's weights written another way a real checkpoint may come."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_path)
    AutoTokenizer.from_pretrained(tiny_rm_path).save_pretrained(path)
    model.config.save_pretrained(path)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    if how == "sharded":  # model.safetensors.index.json and five shards
        model.save_pretrained(path, max_shard_size="100KB")
    elif how == "bin":  # an old pytorch_model.bin
        torch.save(weights, f"{path}/pytorch_model.bin")
    elif how == "prefixed":  # the head saved under the base model's prefix, which transformers also loads
        save_file({("model." + k if k.startswith("score.") else k): v for k, v in weights.items()},
                  f"{path}/model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("how", ["sharded", "bin", "prefixed"])
def test_real_reward_models_stored_other_ways_pass_the_head_check(how, tiny_rm_path, tiny_rm, tmp_path):
    path = _resaved(tiny_rm_path, str(tmp_path / how), how)
    model = make_reward_model(RewardModelConfig(backend="transformers", model=path, device="cpu", max_length=256,
                                                max_tokens_per_batch=4096))
    assert model.identity()["name"] == path  # no refusal before any data moves
    model.load()  # and every weight found when loading
    table = pa.table({"prompt": ["What is 2+2?"], "response": ["4"]})
    assert np.isclose(model.score_table(table).column("rm_score")[0].as_py(),
                      tiny_rm.score_table(table).column("rm_score")[0].as_py(), atol=1e-5)  # the same weights
