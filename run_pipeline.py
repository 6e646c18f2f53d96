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

from pipeline.config import MAPPING_OPTIONS, OPTIONS_BY_NAME, ConfigError, add_arguments, build_config, flag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py", allow_abbrev=False,
        description="Reward-label LLM rollouts: math-verify verdicts, reward-model scores, HERO fusion.",
        epilog="Unrecognised --flags are passed to Apache Beam (e.g. --runner DataflowRunner --project P).")
    p.add_argument("--config", help="YAML file with the same option names (rm_model: ..., alpha: ...)")
    add_arguments(p)  # every labeling and engine option, declared once in pipeline/config.py
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
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME) - set(MAPPING_OPTIONS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s): {', '.join(unknown)}")
    return options


def _prepare_demo(output: str, rows: int) -> dict:
    from pipeline.tools.demo import build_tiny_reward_model, write_synthetic_rollouts

    assets = os.path.join(output, "demo_input")
    rollouts = os.path.join(assets, "rollouts")
    write_synthetic_rollouts(rollouts, rows, rows_per_file=max(1, (rows + 1) // 2), seed=7,
                             missing_reference_every=25, bad_rows=3)
    model = build_tiny_reward_model(os.path.join(assets, "tiny_rm"))
    print(f"demo: {rows} synthetic rollouts in {rollouts}/, tiny random reward model in {model}/", file=sys.stderr)
    return {"input": rollouts, "rm_backend": "transformers", "rm_model": model}


def _print_summary(manifest: dict, output: str):
    print(f"labelled {manifest['output_rows']:,} of {manifest['input_rows']:,} rows "
          f"({manifest['error_rows']:,} in errors/) in {manifest['wall_s']:.1f} s"
          + (f"; sigma_bar = {manifest['sigma_bar']}" if "sigma_bar" in manifest else ""))
    for name, counts in manifest["status_counts"].items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"output: {output}/data/  errors: {output}/errors/  manifest: {output}/manifest.json")


def _print_sample(path: str, rows: int = 8):
    """The first prompt group of a shard, as an aligned table."""
    import pyarrow.parquet as pq

    columns = ["verifier_status", "verifier_score", "extracted_answer", "verifier_rule", "rm_score",
               "hero_normalized", "difficulty_weight", "hero_reward", "advantage"]
    table = pq.read_table(path, columns=["prompt_id", "prompt"] + columns).slice(0, rows)
    print(f"\nfirst rows of {path}  (prompt {table.column('prompt_id')[0]}: {table.column('prompt')[0].as_py()[:70]})")
    cells = [[("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)[:16]) for v in row.values()]
             for row in table.select(columns).to_pylist()]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [columns] + cells:
        print("  ".join(value.rjust(width) for value, width in zip(line, widths)))


def report_main(argv: list[str]) -> int:
    """`herolabel report OUTPUT`: rebuilds run_report.json and report.html of a finished output."""
    import argparse

    parser = argparse.ArgumentParser(prog="herolabel report", description=report_main.__doc__)
    parser.add_argument("output", help="a finished herolabel output directory (local path or fsspec URL)")
    args = parser.parse_args(argv)
    from pipeline.outputs.report import rebuild

    try:
        report = rebuild(args.output)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    auroc = report["rm_vs_verifier_auroc"]
    print(f"report: {args.output}/report.html  numbers: {args.output}/run_report.json  "
          f"(RM vs verifier AUROC pooled {auroc['pooled']}, mean per group {auroc['mean_per_group']})", file=sys.stderr)
    return 0


def fuse_main(argv: list[str]) -> int:
    """`herolabel fuse OUTPUT --fusion MODE [options] --output NEW`: another fusion of a labelled output (its
    verdicts and scores), with no verification and no scoring; the other settings stay the source run's."""
    from pipeline.fuse_output import fuse_options, fuse_output
    from pipeline.outputs.manifest import RunFailed

    parser = argparse.ArgumentParser(prog="herolabel fuse", description=fuse_main.__doc__, allow_abbrev=False)
    parser.add_argument("source", metavar="OUTPUT", help="a finished herolabel output (local path or fsspec URL)")
    parser.add_argument("--output", required=True, help="directory to write (data/, pairs/, errors/, manifest.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    add_arguments(parser, fuse_options())
    args = parser.parse_args(argv)
    options = {known.name: getattr(args, known.name) for known in fuse_options()}
    try:
        manifest = fuse_output(args.source, args.output, options, overwrite=args.overwrite)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"run failed: {exc}", file=sys.stderr)
        return 1
    print(f"fused {manifest['output_rows']:,} rows of {args.source} with --fusion {manifest['fusion']['name']} in "
          f"{manifest['wall_s']:.1f} s: {args.output}/data/", file=sys.stderr)
    return 0


def cache_main(argv: list[str]) -> int:
    """`herolabel cache compact DIR`: merges each locality's segments of the verdict and score caches under DIR
    into one (runs do it themselves past a few files per locality); safe while another run reads the cache."""
    import fsspec

    from pipeline.storage.content_cache import RETIRE_AFTER_S, compact

    parser = argparse.ArgumentParser(prog="herolabel cache", description=cache_main.__doc__, allow_abbrev=False)
    parser.add_argument("action", choices=["compact"])
    parser.add_argument("directory", metavar="DIR", help="the --cache-dir of earlier runs (local path or fsspec URL)")
    parser.add_argument("--retire-after", type=float, default=RETIRE_AFTER_S, metavar="SECONDS",
                        help="delete merged-away segments retired at least this long ago (default %(default)s; 0 "
                             "deletes at once: only when no run is reading the cache)")
    args = parser.parse_args(argv)
    fs, path = fsspec.core.url_to_fs(args.directory)
    if not fs.exists(path) or not fs.glob(f"{path}/*/identity.json"):
        print(f"error: no cache under {args.directory} (no namespace with an identity.json)", file=sys.stderr)
        return 2
    counts = compact(args.directory, retire_after_s=args.retire_after)
    print(f"compacted {counts['namespaces']} namespace(s), {counts['localities']} localities: "
          f"{counts['files_before']} segment files -> {counts['files_after']}; {counts['retired']} merged-away "
          f"segment(s) retired, {counts['deleted']} retired ones deleted (after {args.retire_after:g} s retired)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cache"]:
        return cache_main(argv[1:])
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    if argv[:1] == ["fuse"]:
        return fuse_main(argv[1:])
    args, beam_args = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # Beam warns on import that optional GCP clients are absent
        handler.addFilter(lambda record: not str(record.msg).startswith("apitools not found"))
    from pipeline.storage.fsio import InputError
    from pipeline.outputs.manifest import RunFailed
    from schemas.rollouts import SchemaError

    try:
        if beam_args:  # only then: importing Beam costs about 0.7 s, which a Dask or Ray run need not pay
            from pipeline.engines.beam import check_beam_args

            try:
                check_beam_args(tuple(beam_args))  # an unknown flag (ours mistyped, or not Beam's) stops here
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        options = _options_from_yaml(args.config) if args.config else {}
        options.update({name: getattr(args, name) for name in OPTIONS_BY_NAME if getattr(args, name, None) is not None})
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
    except RunFailed as exc:  # the output is written, and its manifest says "failed"
        print(f"run failed: {exc}", file=sys.stderr)
        return 1
    _print_summary(manifest, config.output)
    if args.demo:
        _print_sample(manifest["data_files"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
