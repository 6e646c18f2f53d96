"""Shared fixtures: the real rollouts in ../shared/data and a tiny random reward model built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> str:
    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"real test data {path} is missing; the repository expects ../shared/data beside it")
    return str(path)


@pytest.fixture(scope="session")
def tiny_rm_path(tmp_path_factory) -> str:
    from pipeline.demo import build_tiny_reward_model

    return build_tiny_reward_model(str(tmp_path_factory.mktemp("tiny_rm")), seed=0)
