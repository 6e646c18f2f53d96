#!/usr/bin/env python
"""herolabel command line: label Parquet rollouts with math-verify, a reward model and HERO fusion.

    python run_pipeline.py --input ROLLOUTS --output DIR --rm-model PATH_OR_ID
    python run_pipeline.py --input ROLLOUTS --output DIR --rm-score-column COL
    python run_pipeline.py --demo

Options may also come from --config FILE.yaml (same names, with underscores); flags win over the file.
Flags this program does not define go to Apache Beam unchanged (--runner, --project, --region, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from pipeline.config import OPTIONS, ConfigError, build_config, flag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py", allow_abbrev=False,
        description="Reward-label LLM rollouts: math-verify verdicts, reward-model scores, HERO fusion.",
        epilog="Unrecognised --flags are passed to Apache Beam (e.g. --runner DataflowRunner --project P).")
    io_group = p.add_argument_group("input and output")
    io_group.add_argument("--input", help="Parquet file, directory or glob; local path or fsspec URL")
    io_group.add_argument("--output", help="output directory: data/, errors/, manifest.json")
    io_group.add_argument("--config", help="YAML file with the same option names (rm_model: ..., alpha: ...)")
    io_group.add_argument("--overwrite", action="store_true", default=None, help="replace a previous run in --output")
    io_group.add_argument("--batch-rows", type=int, help="rows per Arrow batch through verify/score (default 1024)")
    io_group.add_argument("--rows-per-shard", type=int, help="target rows per output shard (default 50000)")
    io_group.add_argument("--shuffle", choices=("files", "engine"),
                          help="group via spill files (default; flat memory locally) or the runner's shuffle")
    io_group.add_argument("--progress", choices=("auto", "on", "off"), help="progress display (default auto: on a TTY)")

    rm = p.add_argument_group("reward model")
    rm.add_argument("--rm-backend", choices=("transformers", "precomputed", "none"),
                    help="default: transformers with --rm-model, precomputed with --rm-score-column")
    rm.add_argument("--rm-model", help="local directory or hub id of a sequence-classification reward model")
    rm.add_argument("--rm-revision", help="hub revision (commit, tag or branch) to pin")
    rm.add_argument("--rm-score-column", help="input column with precomputed RM scores")
    rm.add_argument("--rm-max-length", type=int, help="tokens per rollout before truncation (default 4096)")
    rm.add_argument("--rm-max-tokens-per-batch", type=int, help="padded tokens per forward pass (default 16384)")
    rm.add_argument("--rm-max-batch-size", type=int, help="rollouts per forward pass (default 64)")
    rm.add_argument("--rm-device", choices=("auto", "cpu", "cuda"), help="default auto: cuda when available")
    rm.add_argument("--rm-dtype", choices=("auto", "float32", "bfloat16", "float16"),
                    help="default auto: bfloat16 on GPU, float32 on CPU")
    rm.add_argument("--rm-truncation-side", choices=("left", "right"), help="default left (keeps the response end)")

    verifier = p.add_argument_group("verifier")
    verifier.add_argument("--verifier-workers", type=int, help="math-verify worker processes (default: CPU count)")
    verifier.add_argument("--verifier-timeout", type=int, help="math-verify timeout, whole seconds (default 5)")
    verifier.add_argument("--verifier-hard-timeout", type=float,
                          help="wall-clock seconds per response before its worker is killed (default 30)")
    verifier.add_argument("--verifier-task-size", type=int, help="responses per worker message (default 32)")

    hero = p.add_argument_group("HERO fusion (defaults: docs/HERO.md)")
    hero.add_argument("--alpha", type=float, help="half-width of the incorrect band [-alpha, alpha] (default 0.1)")
    hero.add_argument("--beta", type=float, help="half-width of the correct band [1-beta, 1+beta] (default 0.1)")
    hero.add_argument("--eps", type=float, help="min-max and advantage epsilon (default 1e-6)")
    hero.add_argument("--w-min", type=float, help="lowest difficulty weight (default 0.4)")
    hero.add_argument("--w-max", type=float, help="highest difficulty weight (default 3.0)")
    hero.add_argument("--k", type=float, help="sigmoid steepness of the weight (default 6)")
    hero.add_argument("--sigma-bar", type=float, help="fixed sigma_bar (default: mean of sigma_u over the job)")
    hero.add_argument("--tie-placement", choices=("bottom", "middle"),
                      help="where a single or all-tied verifier class lands in its band (default bottom)")
    hero.add_argument("--advantage-mode", choices=("grpo", "mean-only"), help="default grpo")
    hero.add_argument("--on-bad-reference", choices=("null", "rm_only"),
                      help="groups without a usable reference: null hero columns (default) or RM-only scaling")

    demo = p.add_argument_group("demo")
    demo.add_argument("--demo", action="store_true",
                      help="generate synthetic rollouts and a tiny random RM offline, then label them")
    demo.add_argument("--demo-rows", type=int, default=2000, help="synthetic rollouts for --demo (default 2000)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def _options_from_yaml(path: str) -> dict:
    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    options = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s): {', '.join(unknown)}")
    return options


def _prepare_demo(output: str, rows: int) -> dict:
    from pipeline.demo import build_tiny_reward_model, write_synthetic_rollouts

    assets = os.path.join(output, "demo_input")
    rollouts = os.path.join(assets, "rollouts")
    write_synthetic_rollouts(rollouts, rows, rows_per_file=max(1, (rows + 1) // 2), seed=7,
                             missing_reference_every=25, bad_rows=3)
    model = build_tiny_reward_model(os.path.join(assets, "tiny_rm"))
    print(f"demo: {rows} synthetic rollouts in {rollouts}/, tiny random reward model in {model}/", file=sys.stderr)
    return {"input": rollouts, "rm_backend": "transformers", "rm_model": model}


def _print_summary(manifest: dict, output: str):
    print(f"labelled {manifest['output_rows']:,} of {manifest['input_rows']:,} rows "
          f"({manifest['error_rows']:,} in errors/) in {manifest['wall_s']:.1f} s; sigma_bar = {manifest['sigma_bar']}")
    for name, counts in manifest["status_counts"].items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"output: {output}/data/  errors: {output}/errors/  manifest: {output}/manifest.json")


def _print_sample(path: str, rows: int = 8):
    """The first prompt group of a shard, as an aligned table."""
    import pyarrow.parquet as pq

    columns = ["verifier_status", "verifier_score", "extracted_answer", "rm_score", "hero_normalized",
               "difficulty_weight", "hero_reward", "advantage"]
    table = pq.read_table(path, columns=["prompt_id", "prompt"] + columns).slice(0, rows)
    print(f"\nfirst rows of {path}  (prompt {table.column('prompt_id')[0]}: {table.column('prompt')[0].as_py()[:70]})")
    cells = [[("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)[:16]) for v in row.values()]
             for row in table.select(columns).to_pylist()]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [columns] + cells:
        print("  ".join(value.rjust(width) for value, width in zip(line, widths)))


def main(argv: list[str] | None = None) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.io import InputError
    from schemas.rollouts import SchemaError

    try:
        from pipeline.beam_pipeline import check_beam_args

        try:
            check_beam_args(tuple(beam_args))  # an unknown flag (ours mistyped, or not Beam's) stops here
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        options = _options_from_yaml(args.config) if args.config else {}
        options.update({name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None})
        if args.demo:
            if args.demo_rows < 1:
                raise ConfigError(f"--demo-rows must be >= 1, got {args.demo_rows}")
            options.setdefault("output", "demo_out")
            options["overwrite"] = True
            # Validate the user's own options before generating anything.
            build_config({**options, "input": "-", "rm_backend": options.get("rm_backend", "none")})
            options.update(_prepare_demo(options["output"], args.demo_rows))
        for required in ("input", "output"):
            if not options.get(required):
                raise ConfigError(f"{flag(required)} is required (or run --demo)")
        config = build_config(options, tuple(beam_args))
        from pipeline.run import run

        manifest = run(config)
    except (ConfigError, InputError, SchemaError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(manifest, config.output)
    if args.demo:
        _print_sample(manifest["data_files"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
