"""Exact RM scoring with a real (tiny, random) transformers model: packing, padding, pad = EOS, out of
memory, devices, weights identity and failing fast."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import ConfigError, build_config
from pipeline.tools.demo import synthetic_rollouts
from pipeline.plan import make_plan
from schemas.rollouts import CHAT_PROMPT
from transforms.rm import packing
from transforms.rm import RewardModelConfig, make_reward_model
from transforms.rm.transformers import TransformersRewardModel
from transforms.rm.hub import fingerprint_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path, **settings) -> TransformersRewardModel:
    model = make_reward_model(RewardModelConfig(backend="transformers", model=path, **{"device": "cpu", **settings}))
    model.load()
    return model


def reference_scores(path, ids_rows) -> np.ndarray:
    """Each row alone through transformers' own forward (sdpa, batch of one, no padding), read at its
    last token: what the row's score is by definition."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                               attn_implementation="sdpa").eval()
    model.config.pad_token_id = None  # batch of one: read the last position
    with torch.inference_mode():
        return np.array([model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in ids_rows])


def mixed_rollouts() -> pa.Table:
    """Lengths from a few tokens to truncated, plain and chat prompts, shared prompts (HERO groups)."""
    base = synthetic_rollouts(10, responses_per_prompt=5, seed=11)
    chat = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 6*7?"}]]
    extra = pa.table({"prompt": ["Say one word.", "Count to fifty."],
                      "response": ["Yes", " ".join(str(i) for i in range(1, 51)) * 8]})
    chats = pa.table({"prompt": pa.array(chat * 3, CHAT_PROMPT), "response": ["42", "It is 42.", "\\boxed{42}"]})
    plain = pa.table({"prompt": base.column("prompt").cast(pa.string()), "response": base.column("response")})
    return pa.concat_tables([plain.select(["prompt", "response"]), extra]), chats


@pytest.mark.parametrize("packed,max_tokens,max_rows", [
    (True, 65536, 512),  # every row in one pack
    (True, 300, 512),  # many small packs: rows meet different neighbours than in the run above
    (True, 4096, 3),  # the row cap binds
    (False, 4096, 64),  # the padded path (models without a linear last-token head)
    (False, 300, 2),  # padded, tiny batches
])
def test_every_score_equals_the_rows_single_score(tiny_rm_path, packed, max_tokens, max_rows):
    model = load(tiny_rm_path, max_length=256, max_tokens_per_batch=max(max_tokens, 256), max_batch_size=max_rows)
    for replica in model.scorer.replicas:
        replica.packed = packed and replica.packed
        if not replica.packed:
            replica.model.config._attn_implementation = "sdpa"
    plain, chats = mixed_rollouts()
    for table in (plain, chats):
        scores = model.score_table(table).column("rm_score").to_numpy()
        ids, _, _ = model.encode(table.column("prompt").to_pylist(), table.column("response").to_pylist())
        np.testing.assert_allclose(scores, reference_scores(tiny_rm_path, ids), atol=1e-4)
        alone = [model.score_table(table.slice(i, 1)).column("rm_score")[0].as_py() for i in range(table.num_rows)]
        if packed:  # fixed-row GEMMs (rm.batch_invariant_rows, on by default): the same bits alone as in a pack
            np.testing.assert_array_equal(scores, np.array(alone, dtype=np.float32))
        else:  # a padded batch's attention runs over its longest row: equal within float noise only
            np.testing.assert_allclose(scores, alone, atol=1e-4)
    assert model.scorer.packed is packed


def test_scores_are_bit_identical_across_batch_compositions(tiny_rm_path):
    # What makes a cached score equal a rescored one: random subsets, in shuffled order, score every row to
    # the same float32 bits as the whole table does (on this CPU a whole-pack GEMM does not: a 1- or 2-row
    # pack, or a score head over a row count not a multiple of 4, rounds differently).
    model = load(tiny_rm_path, max_length=256, max_tokens_per_batch=2048, max_batch_size=64)
    table = synthetic_rollouts(400, seed=5).select(["prompt", "response"])
    whole = model.score_table(table).column("rm_score").to_numpy()
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, 65, 399):
        rows = rng.permutation(table.num_rows)[:size]
        np.testing.assert_array_equal(model.score_table(table.take(rows)).column("rm_score").to_numpy(), whole[rows])
    assert model.config.batch_invariant_rows == 512


def test_token_efficiency_of_packing_is_one_and_padding_less(tiny_rm_path):
    packed = load(tiny_rm_path, max_length=256, max_tokens_per_batch=2048)
    table, _ = mixed_rollouts()
    packed.score_table(table)
    assert packed.scorer.real_tokens == packed.scorer.computed_tokens > 0
    padded = load(tiny_rm_path, max_length=256, max_tokens_per_batch=2048)
    padded.scorer.replicas[0].packed = False
    padded.scorer.replicas[0].model.config._attn_implementation = "sdpa"
    padded.score_table(table)
    assert padded.scorer.real_tokens < padded.scorer.computed_tokens


@pytest.fixture()
def eos_rm_path(tiny_rm_path, tmp_path):
    """The tiny RM with no pad token and a chat template that ends every rollout in EOS."""
    from transformers import AutoTokenizer

    path = tmp_path / "eos_rm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_rm_path)
    tokenizer.pad_token = None
    tokenizer.chat_template = tokenizer.chat_template.rstrip() + "{{ eos_token }}"
    tokenizer.save_pretrained(path)
    for name in os.listdir(tiny_rm_path):
        if name.endswith((".safetensors", "config.json")) and not name.startswith("tokenizer"):
            data = open(os.path.join(tiny_rm_path, name), "rb").read()
            (path / name).write_bytes(data)
    return str(path)


@pytest.mark.parametrize("packed", [True, False])
def test_pad_falling_back_to_eos_does_not_move_the_score(eos_rm_path, packed):
    model = load(eos_rm_path, max_length=256, max_tokens_per_batch=4096)
    replica = model.scorer.replicas[0]
    if not packed:
        replica.packed = False
        replica.model.config._attn_implementation = "sdpa"
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id  # the fallback happened
    table = synthetic_rollouts(6, seed=4).select(["prompt", "response"])
    ids, _, _ = model.encode(table.column("prompt").to_pylist(), table.column("response").to_pylist())
    assert all(row[-1] == model.tokenizer.eos_token_id for row in ids)  # every rollout ends in EOS = pad
    scores = model.score_table(table).column("rm_score").to_numpy()
    np.testing.assert_allclose(scores, reference_scores(eos_rm_path, ids), atol=1e-4)
    # The trap itself: transformers' own head, told pad = EOS, reads the token before the final EOS.
    from transformers import AutoModelForSequenceClassification

    naive = AutoModelForSequenceClassification.from_pretrained(eos_rm_path, dtype=torch.float32).eval()
    naive.config.pad_token_id = model.tokenizer.eos_token_id
    with torch.inference_mode():
        misread = naive(input_ids=torch.tensor([ids[0]])).logits[0, 0].item()
    assert abs(misread - scores[0]) > 1e-3


@pytest.mark.parametrize("fails_above,expected_status", [
    (2, "ok"),  # batches of more than 2 rows run out of memory: halving reaches 2 and every row is scored
    (0, "error"),  # even one row runs out of memory: the row stays, with rm_status error
])
def test_out_of_memory_halves_the_batch_and_never_drops_a_row(tiny_rm_path, monkeypatch, fails_above,
                                                              expected_status):
    model = load(tiny_rm_path, max_length=256, max_tokens_per_batch=65536)
    table = synthetic_rollouts(12, seed=5).select(["prompt", "response"])
    clean = model.score_table(table).column("rm_score").to_numpy()
    forward = packing.Scorer._forward_packed
    attempts = []

    def forward_or_oom(self, replica, batch):
        attempts.append(len(batch))
        if len(batch) > fails_above:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return forward(self, replica, batch)

    monkeypatch.setattr(packing.Scorer, "_forward_packed", forward_or_oom)
    out = model.score_table(table)
    assert out.num_rows == table.num_rows
    assert set(out.column("rm_status").to_pylist()) == {expected_status}
    assert attempts[0] == 12  # the whole table was one pack before the first failure
    assert min(attempts) == 1 and len(attempts) > 1  # 12 -> 6 -> 3 -> 1 + 2 (halved, never dropped)
    if expected_status == "ok":
        np.testing.assert_allclose(out.column("rm_score").to_numpy(), clean, atol=1e-4)
    else:
        assert out.column("rm_score").null_count == table.num_rows


@pytest.mark.parametrize("setting,cuda_count,expected", [
    ("auto", 0, ["cpu"]),  # no GPU: the CPU
    ("auto", 2, ["cuda:0", "cuda:1"]),  # one copy per visible GPU
    ("cuda", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
    ("cuda:1", 2, ["cuda:1"]),  # an explicit device
    ("cpu,cpu", 0, ["cpu", "cpu"]),  # two copies on the CPU (how the assignment is tested here)
    ("cuda", 0, RuntimeError),  # asked for a GPU the worker does not have
    ("cuda:2", 2, RuntimeError),  # a GPU index past the visible ones
])
def test_device_assignment(setting, cuda_count, expected):
    if expected is RuntimeError:
        with pytest.raises(RuntimeError, match="GPU"):
            packing.resolve_devices(setting, cuda_count)
    else:
        assert packing.resolve_devices(setting, cuda_count) == expected


def test_two_model_copies_share_the_work_and_agree(tiny_rm_path):
    table = synthetic_rollouts(24, seed=8).select(["prompt", "response"])
    one = load(tiny_rm_path, max_length=256, max_tokens_per_batch=512)
    two = load(tiny_rm_path, max_length=256, max_tokens_per_batch=512, device="cpu,cpu")
    assert len(two.scorer.replicas) == 2
    assert two.scorer.replicas[0].model is not two.scorer.replicas[1].model
    np.testing.assert_allclose(two.score_table(table).column("rm_score").to_numpy(),
                               one.score_table(table).column("rm_score").to_numpy(), atol=1e-5)
    assert all(replica.forwards > 0 for replica in two.scorer.replicas)


def test_weights_fingerprint_reads_the_whole_content(tmp_path, monkeypatch):
    monkeypatch.setenv("HEROLABEL_CACHE_HOME", str(tmp_path / "home"))
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    data = bytearray(os.urandom(5 << 20))
    weights.write_bytes(bytes(data))
    before = fingerprint_dir(str(model))
    data[len(data) // 2] ^= 0xFF  # one byte in the middle: same size, same first and last MiB
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1_000_000_000))
    changed = fingerprint_dir(str(model))
    assert changed != before
    # Remembered by size, mtime, inode, device and ctime: an untouched file is not read again ...
    memo_path = tmp_path / "home" / "file-digests.json"
    memo = json.load(open(memo_path))
    entry = memo[os.path.realpath(weights)]
    assert entry[:2] == [5 << 20, 1_000_000_000]
    entry[-1] = "0" * 64  # a digest that is not the file's: used only if the file is not read again
    memo_path.write_text(json.dumps(memo))
    remembered = fingerprint_dir(str(model))
    assert remembered != changed
    # ... but a same-size rewrite with its mtime put back (cp -p, rsync -a) has a new ctime: read again.
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1_000_000_000))
    assert fingerprint_dir(str(model)) == changed


def test_a_missing_model_fails_before_any_data_moves(tmp_path):
    from pipeline.tools.demo import write_synthetic_rollouts

    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16, seed=1)
    config = build_config({"input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out"),
                           "rm_model": str(tmp_path / "no-such-model")})
    with pytest.raises(ConfigError, match="--rm-model"):
        make_plan(config, "test")
    assert not (tmp_path / "out").exists()


def test_a_model_with_two_outputs_is_refused_by_name(tmp_path, tiny_rm_path):
    from transformers import AutoConfig

    path = tmp_path / "two_labels"
    path.mkdir()
    for name in os.listdir(tiny_rm_path):
        (path / name).write_bytes(open(os.path.join(tiny_rm_path, name), "rb").read())
    config = AutoConfig.from_pretrained(path)
    config.num_labels = 2
    config.save_pretrained(path)
    from pipeline.tools.demo import write_synthetic_rollouts

    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16, seed=1)
    with pytest.raises(ConfigError, match="--rm-model .*num_labels=2"):
        make_plan(build_config({"input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out"),
                                "rm_model": str(path)}), "test")


HUB_CHECK = """
import json, sys
from pipeline.config import build_config
from pipeline.plan import make_plan
plan = make_plan(build_config({"input": sys.argv[1], "output": sys.argv[2], "rm_model": "acme/tiny-rm"}), "test")
print(json.dumps({"identity": plan.metadata["reward_model"], "revision": plan.config.rm.revision}))
"""


def test_a_hub_model_is_recorded_by_its_resolved_commit(tmp_path, tiny_rm_path):
    """A hub id resolved from the local hub cache (offline): the manifest names the commit, and the
    workers are pinned to it."""
    from pipeline.tools.demo import write_synthetic_rollouts

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-rm"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in os.listdir(tiny_rm_path):
        (snapshot / name).write_bytes(open(os.path.join(tiny_rm_path, name), "rb").read())
    write_synthetic_rollouts(str(tmp_path / "in.parquet"), 16, seed=1)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run([sys.executable, "-c", HUB_CHECK, str(tmp_path / "in.parquet"), str(tmp_path / "out")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert result["identity"]["commit"] == commit and result["identity"]["name"] == "acme/tiny-rm"
    assert result["revision"] == commit


def test_copies_of_a_model_score_alike_but_a_changed_weight_changes_the_identity(tiny_rm_path, tmp_path):
    from safetensors.torch import load_file, save_file

    copy_path = tmp_path / "copy"
    copy_path.mkdir()
    for name in os.listdir(tiny_rm_path):
        (copy_path / name).write_bytes(open(os.path.join(tiny_rm_path, name), "rb").read())
    same = make_reward_model(RewardModelConfig(backend="transformers", model=str(copy_path)))
    original = make_reward_model(RewardModelConfig(backend="transformers", model=tiny_rm_path))
    assert same.identity()["fingerprint"] == original.identity()["fingerprint"]
    weights = copy_path / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("score.weight"))
    tensors[name] = copy.deepcopy(tensors[name]) * 1.01
    save_file(tensors, weights, metadata={"format": "pt"})
    changed = make_reward_model(RewardModelConfig(backend="transformers", model=str(copy_path)))
    assert changed.identity()["fingerprint"] != original.identity()["fingerprint"]


@pytest.mark.parametrize("config_class,settings,packs", [
    ("Qwen2Config", {}, True),  # full attention: packed
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 64}, False),  # sliding layers: padded
    ("MistralConfig", {"sliding_window": 4096}, False),  # Mistral-7B-v0.1's plain sliding_window: padded
    ("MistralConfig", {"sliding_window": None}, True),
])
def test_sliding_window_models_are_not_packed(config_class, settings, packs):
    import transformers

    config = getattr(transformers, config_class)(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                 num_labels=1, **settings)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    assert packing.can_pack(model) is packs
