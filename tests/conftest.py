"""Shared fixtures: the real rollouts in ../shared/data and a tiny random reward model built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ENGINES
from transforms.rm import register_backend

register_backend("fake", "fakes:FakeRewardModel")  # tests/fakes.py: instant deterministic scores
ENGINE_NAMES = tuple(ENGINES)  # every engine test runs on each registered engine

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> str:
    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"real test data {path} is missing; the repository expects ../shared/data beside it")
    return str(path)


def label(input_path, output, **options) -> dict:
    """Runs the pipeline as the CLI would (build_config, then run) and returns the manifest."""
    from pipeline.config import build_config
    from pipeline.run import run

    options = {"verifier_workers": 2, "progress": "off", **options}
    return run(build_config({"input": str(input_path), "output": str(output), **options}), show_progress=False)


@pytest.fixture(scope="session")
def tiny_rm_path(tmp_path_factory) -> str:
    from pipeline.tools.demo import build_tiny_reward_model

    return build_tiny_reward_model(str(tmp_path_factory.mktemp("tiny_rm")), seed=0)
