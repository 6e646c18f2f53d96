"""OUTPUT/README.md: a dataset card in the hub's format.

Its `configs:` name the labelled data (the default) and the DPO pairs, so `datasets.load_dataset(OUTPUT)`
and `load_dataset(OUTPUT, "pairs")` load each without mixing schemas; it describes the columns, the
settings and the provenance.
"""

from __future__ import annotations

import json

import fsspec

from pipeline.storage import fsio

COLUMN_NOTES = {
    "verifier_score": "1 when the final answer equals the reference, 0 otherwise; null when not judgeable",
    "verifier_status": "ok, no_answer, timeout, error, no_reference, bad_reference",
    "extracted_answer": "the final answer as compared (normalized)",
    "verifier_rule": "the rule that decided the verdict: math_verify, extraction, refused:<name>, or the "
                     "data_source's verifier (exact, numeric:TOL, choice, package.module:function)",
    "fallback_verdict": "the fallback judge's verdict on a row the rules rejected: correct, incorrect, invalid, "
                        "unparsed; null where it was not asked",
    "rm_score": "the reward model's raw score (a logit)",
    "rm_status": "ok, truncated, missing, error, skipped",
}


def write_dataset_card(output: str, manifest: dict, data_schema, pairs: bool, fusion_notes: dict[str, str]) -> None:
    """OUTPUT/README.md: the hub's dataset card, with configs for data and pairs."""
    configs = ["configs:", "- config_name: data", "  default: true", "  data_files:", "  - split: train",
               "    path: data/*.parquet"]
    if pairs:
        configs += ["- config_name: pairs", "  data_files:", "  - split: train", "    path: pairs/*.parquet"]
    # Sizes and row counts per config, as the hub writes them. datasets caches a local directory's configs
    # under its base name and a hash of this metadata, not of the files: without it, two outputs both
    # named "out" loaded the first one's rows.
    infos = ["dataset_info:"]
    for name, files, rows in (("data", manifest.get("data_files", []), manifest.get("output_rows", 0)),
                              *((("pairs", manifest["pairs"]["files"], manifest["pairs"]["rows"]),) if pairs else ())):
        size = 0
        for url in files:
            fs, path = fsspec.core.url_to_fs(url)
            size += fs.size(path)
        infos += [f"- config_name: {name}", "  splits:", "  - name: train", f"    num_bytes: {size}",
                  f"    num_examples: {rows}", f"  download_size: {size}", f"  dataset_size: {size}"]
    configs += infos
    notes = {**COLUMN_NOTES, **fusion_notes}
    for name, signal in (manifest.get("reward_models") or {}).items():  # several reward signals
        score_column, status_column = signal.get("columns", [f"rm_score__{name}", f"rm_status__{name}"])
        used = " (the one in rm_score, used by the fusion)" if name == manifest.get("fusion_rm") else ""
        notes[score_column] = f"reward signal `{name}`'s raw score{used}"
        notes[status_column] = f"reward signal `{name}`'s status, as rm_status"
    fusion_title = (manifest.get("fusion") or {}).get("title", "the HERO fusion of both per prompt group "
                                                                "(arXiv 2510.07242)")
    columns = "\n".join(f"| `{f.name}` | {f.type} | {notes.get(f.name, 'from the input')} |"
                        for f in data_schema)
    identity = manifest.get("reward_model", {})
    card = "\n".join([
        "---", *configs, "tags:", "- reward-labels", "- herolabel", "---", "",
        "# Reward-labelled rollouts", "",
        f"{manifest.get('output_rows')} responses labelled by herolabel {manifest.get('herolabel_version')}: a "
        f"verifier verdict, a reward-model score and {fusion_title}. Rows that could not be labelled are in "
        "`errors/` (not a config).", "",
        "```python", "from datasets import load_dataset", f"rows = load_dataset({output!r}, split='train')",
        *([f"pairs = load_dataset({output!r}, 'pairs', split='train')  # TRL preference format"] if pairs else []),
        "```", "",
        "## Columns (config `data`)", "", "| column | type | meaning |", "| --- | --- | --- |", columns, "",
        *(["## Config `pairs`", "", "DPO pairs in TRL's preference format (prompt / chosen / rejected) with "
           "chosen_reward, rejected_reward, margin, verdicts and sample indices; settings: "
           f"`{json.dumps(manifest.get('config', {}).get('pairs', {}))}`; prompts without a pair by reason: "
           f"`{json.dumps((manifest.get('pairs') or {}).get('prompts_without_pair', {}))}`.", ""] if pairs else []),
        "## Provenance", "",
        f"- input: {', '.join(manifest.get('input_files', [])[:10])}"
        f"{' …' if len(manifest.get('input_files', [])) > 10 else ''}",
        f"- reward model: `{json.dumps(identity)}`",
        *([f"- σ̄ (sigma_bar): {manifest.get('sigma_bar')}"] if "sigma_bar" in manifest else []),
        f"- status: {manifest.get('status')}; input rows {manifest.get('input_rows')} = output rows "
        f"{manifest.get('output_rows')} + error rows {manifest.get('error_rows')}",
        "- settings: `manifest.json` (all), and every shard's Parquet metadata (key `herolabel`)", "",
    ])
    with fsio.open_atomic(fsio.join(output, "README.md"), "w") as handle:
        handle.write(card)
