"""Shared fixtures: the real rollouts in ../shared/data and a tiny random reward model built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing a test runs reaches beyond loopback: no hub downloads, no usage statistics (set before any library
# reads them at import; .ci/run also runs the suite in a namespace with only a loopback interface).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(OFFLINE_ENV)

import fakes  # noqa: F401 - registers the "fake" reward backend (tests/fakes.py: instant deterministic scores)
import fake_judge  # noqa: F401 - registers the "scripted" fallback judge (tests/fake_judge.py)
from pipeline.config import ENGINES

ENGINE_NAMES = tuple(ENGINES)  # every engine test runs on each registered engine
# Worker processes that engines start (Ray's) import the test plug-ins as the driver does.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))

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
