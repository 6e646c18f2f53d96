#!/usr/bin/env python
"""GDPO against verl's own function: records verl's advantages on fixture groups as a test fixture.

    python benchmarks/verl_gdpo_crosscheck.py [--env DIR] [--out tests/fixtures/verl_gdpo.json]

Builds (once) a separate virtual environment in --env with torch==2.13.0 (installed first: verl's
dependencies would otherwise pull a CUDA torch) and verl 0.9.x, never the project's environment (verl pins
transformers < 5.11 and, through hydra, antlr4 4.9, which breaks math-verify). In it, runs
`verl.trainer.ppo.core_algos.compute_gdpo_outcome_advantage` on the fixture groups below, laid out as
one-token responses (each component a per-row score in non_tensor_batch, as verl's reward manager passes
them), and writes the groups, the settings and verl's advantages to --out. tests/test_gdpo.py applies
verl's batch whitening (masked_whiten) to herolabel's gdpo_advantage of the same rows and compares within
1e-5 (verl works in float32). Singleton groups are left out: verl gives them r / (1 + eps), herolabel 0.
Takes a few minutes the first time (the install), seconds after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VERL = "verl==0.9.1"
TORCH = "torch==2.13.0"
HERE = Path(__file__).resolve()


def fixture_cases() -> list[dict]:
    """Deterministic groups: components as float32-exact values (what herolabel's score columns hold)."""
    import random

    rng = random.Random(20260)
    cases = []
    # two components (the verifier bit and one RM), six groups of four, default weights
    sizes = [4] * 6
    cases.append({"name": "verifier_and_rm", "eps": 1e-6, "weights": {"verifier": 1.0, "rm": 1.0}, "sizes": sizes})
    # three components, groups of 2 to 8, unequal weights and TRL's epsilon
    cases.append({"name": "three_components", "eps": 1e-4, "weights": {"verifier": 1.0, "a": 0.5, "b": 2.0},
                  "sizes": [2, 3, 5, 8, 4, 6, 7]})
    # ties: a group whose verdicts are all equal and one whose RM scores are (its A_k is 0)
    cases.append({"name": "ties", "eps": 1e-6, "weights": {"verifier": 1.0, "rm": 0.25}, "sizes": [3, 3, 5]})
    for case in cases:
        rows = []
        for group, size in enumerate(case["sizes"]):
            for _ in range(size):
                row = {"prompt_id": f"{case['name']}-{group:02d}"}
                for component in case["weights"]:
                    if component == "verifier":
                        row[component] = float(rng.random() < 0.5)
                    else:  # quarter steps: exact in float32
                        row[component] = round(rng.gauss(0, 3) * 4) / 4
                rows.append(row)
        if case["name"] == "ties":
            for row in rows:
                if row["prompt_id"].endswith("-00"):
                    row["verifier"] = 1.0
                if row["prompt_id"].endswith("-01"):
                    row["rm"] = 2.5
        case["rows"] = rows
    return cases


def run_verl(out: Path) -> None:
    """Inside the verl environment: verl's advantages per case."""
    import numpy as np
    import torch
    import verl
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage

    cases = fixture_cases()
    for case in cases:
        rows, names = case["rows"], list(case["weights"])
        n, prompt_length = len(rows), 2
        batch = {"prompts": torch.zeros((n, prompt_length), dtype=torch.long),
                 "attention_mask": torch.ones((n, prompt_length + 1), dtype=torch.long)}  # one response token
        config = OmegaConf.create({"gdpo_reward_keys": names, "gdpo_reward_weights": [case["weights"][k] for k in names]})
        non_tensor = {k: np.array([r[k] for r in rows], dtype=np.float32) for k in names}
        advantages, _ = compute_gdpo_outcome_advantage(
            token_level_rewards=torch.zeros((n, 1)), response_mask=torch.ones((n, 1)),
            index=np.array([r["prompt_id"] for r in rows], dtype=object), epsilon=case["eps"],
            config=config, non_tensor_batch=non_tensor, batch=batch)
        case["verl_advantage"] = advantages[:, 0].tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"verl": verl.__version__, "torch": torch.__version__,
                               "function": "verl.trainer.ppo.core_algos.compute_gdpo_outcome_advantage",
                               "cases": cases}, indent=1) + "\n")
    print(f"wrote {out}: {len(cases)} cases from verl {verl.__version__}")


def ensure_env(env: Path) -> Path:
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    probe = subprocess.run([str(python), "-c", "import verl"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", TORCH], check=True)  # first: a CPU build
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", VERL], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "herolabel-verl-env"),
                        help="the separate environment for verl (built when missing)")
    parser.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "verl_gdpo.json"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        run_verl(Path(args.out))
        return 0
    python = ensure_env(Path(args.env))
    return subprocess.run([str(python), str(HERE), "--inside", "--out", args.out]).returncode


if __name__ == "__main__":
    sys.exit(main())
