"""DPO pairs: the rules on small tables, then real runs loaded with datasets and trained on with TRL."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import label, shared_file
from schemas.rollouts import CHAT_PROMPT
from transforms.pairs import PairsConfig, make_pairs


def group(*rows, prompt_id="p", prompt="Q?"):
    """Rows of one prompt: (hero_reward, verifier_score, verifier_status)."""
    return [{"prompt_id": prompt_id, "prompt": prompt, "response": f"r{i}", "sample_index": i,
             "hero_reward": h, "verifier_score": v, "verifier_status": s} for i, (h, v, s) in enumerate(rows)]


def pairs_of(rows, **settings):
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("response", pa.string()), ("sample_index", pa.int64()),
        ("hero_reward", pa.float64()), ("verifier_score", pa.float32()), ("verifier_status", pa.string())]))
    pairs, reasons = make_pairs(table, PairsConfig(enabled=True, **settings))
    return [(p["chosen"], p["rejected"]) for p in pairs.to_pylist()], {k: v for k, v in reasons.items() if v}


@pytest.mark.parametrize("rows,settings,expected_pairs,expected_reasons", [
    # Mixed verdicts: best verified-correct chosen against worst verified-incorrect.
    (group((1.1, 1.0, "ok"), (0.9, 1.0, "ok"), (0.1, 0.0, "ok"), (-0.2, 0.0, "ok")), {}, [("r0", "r3")], {}),
    # A correct response with a lower hero_reward than an incorrect one never pairs the wrong way round.
    (group((0.2, 1.0, "ok"), (0.5, 0.0, "ok")), {}, [], {"below_margin": 1}),
    # A timeout is never the rejected (nor an error, nor a bad reference): only the verified rows pair.
    (group((1.0, 1.0, "ok"), (-1.0, None, "timeout"), (-0.9, None, "error"), (0.0, 0.0, "ok")), {}, [("r0", "r3")], {}),
    (group((1.0, 1.0, "ok"), (-1.0, None, "timeout")), {}, [], {"unverified": 1}),
    # A response with no answer is verified-incorrect.
    (group((1.0, 1.0, "ok"), (0.0, 0.0, "no_answer")), {}, [("r0", "r1")], {}),
    # All correct: no pair unless within-band pairs are allowed; then HERO's ranking decides.
    (group((1.05, 1.0, "ok"), (0.95, 1.0, "ok")), {}, [], {"one_class": 1}),
    (group((1.05, 1.0, "ok"), (0.95, 1.0, "ok")), {"within_band": True}, [("r0", "r1")], {}),
    # Within-band pairs still need the margin; ties never pair.
    (group((1.0, 1.0, "ok"), (1.0, 1.0, "ok")), {"within_band": True, "min_margin": 0.0}, [], {"below_margin": 1}),
    (group((1.02, 1.0, "ok"), (1.0, 1.0, "ok")), {"within_band": True, "min_margin": 0.05}, [], {"below_margin": 1}),
    # "all": every qualifying pair, widest margin first, up to the cap.
    (group((1.1, 1.0, "ok"), (0.9, 1.0, "ok"), (0.0, 0.0, "ok")), {"strategy": "all", "max_per_prompt": 5},
     [("r0", "r2"), ("r1", "r2")], {}),
    (group((1.1, 1.0, "ok"), (0.9, 1.0, "ok"), (0.0, 0.0, "ok"), (0.1, 0.0, "ok")),
     {"strategy": "all", "max_per_prompt": 2}, [("r0", "r2"), ("r0", "r3")], {}),
    # A single response cannot pair; a response without a hero_reward does not take part.
    (group((1.0, 1.0, "ok")), {}, [], {"single_response": 1}),
    (group((None, 1.0, "ok"), (0.0, 0.0, "ok")), {}, [], {"unverified": 1}),
])
def test_pair_rules(rows, settings, expected_pairs, expected_reasons):
    pairs, reasons = pairs_of(rows, **settings)
    assert pairs == expected_pairs
    assert reasons == expected_reasons


def test_chat_prompts_give_conversational_pairs():
    chat = [{"role": "user", "content": "2+2?"}]
    table = pa.table({"prompt_id": ["p", "p"], "prompt": pa.array([chat, chat], CHAT_PROMPT),
                      "response": ["4", "5"], "hero_reward": [1.0, 0.0], "verifier_score": pa.array([1.0, 0.0], pa.float32()),
                      "verifier_status": ["ok", "ok"]})
    pairs, _ = make_pairs(table, PairsConfig(enabled=True))
    row = pairs.to_pylist()[0]
    assert row["prompt"] == chat
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "5"}]


@pytest.mark.parametrize("settings,message", [
    ({"min_margin": -1}, "pairs.min_margin"),
    ({"strategy": "random"}, "pairs.strategy"),
    ({"max_per_prompt": 0}, "pairs.max_per_prompt"),
])
def test_bad_pair_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        PairsConfig(**settings)


@pytest.fixture(scope="module")
def qwen_pairs(tmp_path_factory):
    """The issue's check: qwen25_math_cot100 with its real RM scores and --pairs (within-band on)."""
    output = tmp_path_factory.mktemp("pairs") / "out"
    manifest = label(shared_file("qwen25_math_cot100.parquet"), output, rm_score_column="qwen_rm_score", pairs=True,
                     pairs_within_band=True, pairs_strategy="all", pairs_max_per_prompt=3, pairs_min_margin=0.02)
    return output, manifest


@pytest.mark.slow
def test_real_pairs_follow_the_rules_and_load_with_datasets(qwen_pairs):
    import datasets

    output, manifest = qwen_pairs
    pairs = datasets.load_dataset("parquet", data_files=str(output / "pairs" / "*.parquet"), split="train")
    assert len(pairs) == manifest["pairs"]["rows"] > 0
    assert set(pairs.features) >= {"prompt", "chosen", "rejected", "margin", "chosen_reward", "rejected_reward"}
    data = pq.read_table(output / "data").to_pylist()
    correct_prompts = {r["prompt_id"] for r in data if r["verifier_score"] == 1.0 and r["verifier_status"] == "ok"}
    for pair in pairs:
        assert pair["margin"] >= 0.02 and pair["margin"] == pytest.approx(pair["chosen_reward"] - pair["rejected_reward"])
        if pair["prompt_id"] in correct_prompts:
            assert pair["chosen_verifier_score"] == 1.0
    prompts = {r["prompt_id"] for r in data}
    paired = set(pairs["prompt_id"])
    assert len(paired) + sum(manifest["pairs"]["prompts_without_pair"].values()) == len(prompts)
    assert max(sum(1 for p in pairs["prompt_id"] if p == q) for q in paired) <= 3


@pytest.mark.slow
def test_trl_dpo_trainer_takes_a_step_on_the_pairs(qwen_pairs, tiny_rm_path, tmp_path):
    import datasets
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import DPOConfig, DPOTrainer

    output, _ = qwen_pairs
    tokenizer = AutoTokenizer.from_pretrained(tiny_rm_path)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(config)
    pairs = datasets.load_dataset("parquet", data_files=str(output / "pairs" / "*.parquet"), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     max_length=256, save_strategy="no", use_cpu=True, logging_steps=1)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=pairs.select(range(4)),
                         processing_class=tokenizer)
    before = [p.detach().clone() for p in policy.parameters()]
    result = trainer.train()
    assert result.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # an optimisation step happened


def test_manifest_counts_prompts_without_a_pair(qwen_pairs):
    output, manifest = qwen_pairs
    meta = json.loads(pq.ParquetFile(next((output / "pairs").glob("*.parquet"))).schema_arrow.metadata[b"herolabel"])
    assert meta["no_pair"] == manifest["pairs"]["prompts_without_pair"]
    assert meta["pairs"]["within_band"] is True
