"""The run report: OUTPUT/run_report.json and OUTPUT/report.html, written before the manifest.

run_report.json: rows per stage and per status, per-data_source verifier pass rates, RM score statistics per verifier
class, sigma_bar, time per stage (the engine's busy milliseconds), the RM-vs-verifier AUROC (pooled over
the rows of groups with mixed verdicts, and the mean of per-group AUROCs: how far the RM agrees with
the verifier, the paper's check), and the pairs summary when --pairs ran. With a verifier_rule column also
verdicts per rule and data_source, and the refusals (rules "refused:<name>") that fired on rows the input's
own boolean label_correct calls correct: where a refusal rule costs true positives.

report.html: one self-contained file (inline SVG images, no script, no network) with the RM score
distribution per verifier class, the fusion's reward per verifier class, difficulty weight against sigma_u (hero), pass
rates per data_source, the rule x data_source table and the refusals on labelled-correct rows.
`herolabel report OUTPUT` rebuilds both from an existing output.

Reads only the columns it needs, one shard at a time. Counts, pass rates and each score's rows, mean, std, min
and max per class are exact at any size; medians, AUROCs, the signals' section and the plots come from every
row up to 500,000 output rows and above that from a deterministic sample of whole prompt groups of about that
many rows ("sample" in run_report.json; pipeline/outputs/report_stats.py), so memory stays flat as outputs
grow. Scatter plots draw at most 20,000 points. The rule counts are tallied shard by shard and keep no rows
but the listed refusals.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.outputs.agreement import rm_vs_verifier, signals_section
from pipeline.outputs.judge_report import JudgeTally, judge_html
from pipeline.outputs.report_stats import (CLASSES, MISSING, ExactTally, sample_fraction, sampled_groups,
                                           verifier_class)
from pipeline.storage import fsio
from schemas.rollouts import VERDICT_STATUSES
from transforms.rm.signals import SCORE_PREFIX

# "reward" is read from the fusion's reward column (the manifest's fusion.reward_column; HERO: hero_reward).
COLUMN_TYPES = {"prompt_id": pa.string(), "data_source": pa.string(), "verifier_score": pa.float64(),
                "verifier_status": pa.string(), "rm_score": pa.float64(), "reward": pa.float64(),
                "difficulty_weight": pa.float64(), "group_rm_std": pa.float64()}
DEFAULT_REWARD = "hero_reward"  # manifests written before the fusion was recorded
COLUMNS = tuple(COLUMN_TYPES)
PLOT_POINTS = 20_000
CLASS_COLORS = {"correct": "#2e7d32", "incorrect": "#c62828", "unverified": "#757575"}


RULE = "verifier_rule"
REFUSED = "refused:"  # prefix of the rules that rejected an answer the comparison would have accepted
LABEL = "label_correct"  # the input's own correctness label, when it has one (the shared labelled files do)
REFUSALS_LISTED = 1_000  # refusal rows kept in run_report.json (all of them are counted)
REFUSALS_SHOWN = 100  # of those, rows shown in report.html


class RuleTally:
    """Verdicts per verifier_rule x data_source, and refusals against label_correct, added shard by shard.

    Keeps counts and at most REFUSALS_LISTED refusal rows, so memory does not grow with the output. Outputs
    written before verifier_rule existed have no such column: `has_rule` stays false and the sections are None.
    """

    def __init__(self):
        self.has_rule = False
        self.has_label = False
        self.verdicts: Counter = Counter()  # (rule, data_source) -> verdict rows
        self.refusals: Counter = Counter()  # (rule, label_correct True / False / None) -> rows
        self.listed: list[dict] = []
        self.total = 0  # refusals on rows labelled correct

    def columns(self, schema: pa.Schema) -> list[str]:
        """The columns a shard of this schema must be read with, besides COLUMNS."""
        if RULE not in schema.names:
            return []
        # A label of another type (0/1, "yes") is not guessed at: the listing says there is no label column.
        labelled = LABEL in schema.names and pa.types.is_boolean(schema.field(LABEL).type)
        return [RULE, LABEL] if labelled else [RULE]

    def add(self, table: pa.Table, extra: pa.Table, parquet: pq.ParquetFile) -> None:
        """One shard: `table` its COLUMNS, `extra` the columns() of it, `parquet` the file (for listed refusals)."""
        if RULE not in extra.column_names:
            return
        self.has_rule = True
        labelled = LABEL in extra.column_names
        self.has_label |= labelled
        rules = extra.column(RULE).cast(pa.string())
        sources = pc.fill_null(table.column("data_source").cast(pa.string()), MISSING)
        verdict = pc.fill_null(pc.is_in(table.column("verifier_status"),
                                        value_set=pa.array(list(VERDICT_STATUSES), pa.string())), False)
        counts = (pa.table({"rule": pc.fill_null(rules, MISSING), "source": sources}).filter(verdict)
                  .group_by(["rule", "source"]).aggregate([([], "count_all")]))
        for rule, source, n in zip(*(counts.column(c).to_pylist() for c in ("rule", "source", "count_all"))):
            self.verdicts[(rule, source)] += n
        refused = pc.fill_null(pc.starts_with(rules, REFUSED), False)
        if not pc.any(refused).as_py():
            return
        labels = extra.column(LABEL) if labelled else pa.nulls(len(rules), pa.bool_())
        for rule, label in zip(rules.filter(refused).to_pylist(), labels.filter(refused).to_pylist()):
            self.refusals[(rule, label)] += 1
        hits = np.flatnonzero(pc.and_(refused, pc.fill_null(labels, False)).to_numpy(zero_copy_only=False))
        self.total += len(hits)
        room = REFUSALS_LISTED - len(self.listed)
        if not len(hits) or room <= 0:
            return
        # Two string columns of one shard, read only when it has a refusal to list: bounded by the shard,
        # which the writer held in memory whole.
        take = pa.array(hits[:room], pa.int64())
        texts = parquet.read(columns=["extracted_answer", "reference"]).take(take)
        for prompt_id, source, rule, answer, reference in zip(
                table.column("prompt_id").take(take).to_pylist(), sources.take(take).to_pylist(),
                rules.take(take).to_pylist(), texts.column("extracted_answer").to_pylist(),
                texts.column("reference").to_pylist()):
            self.listed.append({"prompt_id": prompt_id, "data_source": source, "rule": rule,
                                "extracted_answer": answer, "reference": reference})

    def verdicts_by_rule(self) -> dict | None:
        """{rule: {data_source: verdict rows}}, rules and sources sorted; None without a verifier_rule column."""
        if not self.has_rule:
            return None
        table: dict[str, dict[str, int]] = {}
        for (rule, source), n in sorted(self.verdicts.items()):
            table.setdefault(rule, {})[source] = n
        return table

    def refusals_on_labelled_correct(self) -> dict | None:
        """Refusals that fired on rows labelled correct (total, first REFUSALS_LISTED rows) and per rule by label."""
        if not self.has_rule:
            return None
        if not self.has_label:
            return {"label_column": None, "total": None, "by_rule": {}, "rows": []}
        by_rule: dict[str, dict[str, int]] = {}
        for (rule, label), n in sorted(self.refusals.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            counts = by_rule.setdefault(rule, {"labelled_correct": 0, "labelled_incorrect": 0, "unlabelled": 0})
            counts["unlabelled" if label is None else "labelled_correct" if label else "labelled_incorrect"] += n
        return {"label_column": LABEL, "total": self.total, "by_rule": by_rule, "rows": self.listed}


def read_columns(output: str, tallies: tuple = (), reward_column: str = DEFAULT_REWARD,
                 signal_columns: tuple[str, ...] = (), fraction: float = 1.0) -> pa.Table:
    """COLUMNS of every shard ("reward" from `reward_column`) and `signal_columns` (each reward signal's
    score, as float64), missing ones as nulls; each of `tallies` (RuleTally, JudgeTally, ExactTally: columns(),
    add()) counts every row on the way, and only the sampled groups' rows are kept (`fraction` < 1)."""
    source = {"reward": reward_column}
    types = {**COLUMN_TYPES, **{c: pa.float64() for c in signal_columns}}
    fs, path = fsspec.core.url_to_fs(output)
    tables = []
    for name in sorted(fs.glob(f"{path}/data/*.parquet")):
        with fs.open(name, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            wants = [tally.columns(parquet.schema_arrow) for tally in tallies]
            extra = list(dict.fromkeys(c for columns in wants for c in columns))
            wanted = {c: source.get(c, c) for c in types}
            read = parquet.read(columns=list(dict.fromkeys([n for n in wanted.values() if n in names] + extra)))
            table = pa.table({c: read.column(wanted[c]).cast(t) if wanted[c] in names else pa.nulls(read.num_rows, t)
                              for c, t in types.items()})
            for tally, columns in zip(tallies, wants):
                tally.add(table, read.select(columns), parquet)
            if fraction < 1:
                table = table.filter(sampled_groups(table.column("prompt_id"), fraction))
        tables.append(table)
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], t) for c, t in types.items()})


def group_rows(prompt_ids) -> list[np.ndarray]:
    """The row positions of each prompt group (views into one sorted index array: 4 bytes a row, no Python
    object per row)."""
    if not len(prompt_ids):
        return []
    codes = pc.dictionary_encode(prompt_ids).combine_chunks().indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def build_report(output: str, manifest: dict) -> dict:
    """The numbers of run_report.json, from the written shards and the run's manifest fields."""
    tally, judged, exact = RuleTally(), JudgeTally(), ExactTally()
    reward_column = (manifest.get("fusion") or {}).get("reward_column", DEFAULT_REWARD)
    signal_names = list(manifest.get("reward_models") or {})
    fraction = sample_fraction(manifest.get("output_rows"))  # 1 (every row) up to report_stats.SAMPLE_ROWS
    table = read_columns(output, (tally, judged, exact), reward_column, tuple(SCORE_PREFIX + n for n in signal_names),
                         fraction)
    scores = table.column("verifier_score").to_numpy(zero_copy_only=False).astype(float)
    rm = table.column("rm_score").to_numpy(zero_copy_only=False).astype(float)
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(float)
    classes = verifier_class(scores, table.column("verifier_status")) if table.num_rows else np.array([], dtype=str)
    groups = group_rows(table.column("prompt_id"))
    counters = manifest.get("engine", {}).get("counters", {})
    report = {
        "input_rows": manifest.get("input_rows"), "output_rows": manifest.get("output_rows"),
        "error_rows": manifest.get("error_rows"), "status_counts": manifest.get("status_counts"),
        "error_reasons": manifest.get("error_reasons"),
        "verifier_pass_rate_by_source": exact.pass_rates(),
        "rm_score_by_verifier_class": {c: exact.summary("rm_score", c, rm[classes == c]) for c in CLASSES},
        "fusion": (manifest.get("fusion") or {}).get("name", "hero"),
        "reward_column": reward_column,
        reward_column: exact.summary("reward", None, reward),
        "reward_by_verifier_class": {c: exact.summary("reward", c, reward[classes == c]) for c in CLASSES},
        # Medians, AUROCs, the signals' section and the plots: over these rows (all of them up to SAMPLE_ROWS).
        "sample": {"fraction": round(fraction, 6), "rows": table.num_rows, "groups": len(groups)},
        "sigma_bar": manifest.get("sigma_bar"),
        "rows_by_stage": {k: v for k, v in sorted(counters.items()) if not k.endswith("_ms")},
        "stage_seconds": {k[:-3]: round(v / 1000, 3) for k, v in sorted(counters.items()) if k.endswith("_ms")},
        "wall_s": manifest.get("wall_s"),
        "rm_vs_verifier_auroc": rm_vs_verifier(rm, classes, groups),
        "rm_rows": manifest.get("rm_rows"),
        **({"reward_signals": signals_section(table, classes, groups, manifest)} if manifest.get("reward_models") else {}),
        "pairs": manifest.get("pairs"),
        "verdicts_by_rule_and_source": tally.verdicts_by_rule(),
        "refusals_on_labelled_correct": tally.refusals_on_labelled_correct(),
        **({"fallback_judge": section} if (section := judged.section(manifest)) else {}),
    }
    return report, table, classes


# ------------------------------------------------------------------------------------------------
# Plots: small SVG documents, embedded as data: URIs.
# ------------------------------------------------------------------------------------------------

def _svg(width: int, height: int, body: list[str], title: str) -> str:
    document = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
                f'<rect width="{width}" height="{height}" fill="white"/>'
                f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>'
                + "".join(body) + "</svg>")
    return "data:image/svg+xml;base64," + base64.b64encode(document.encode()).decode()


def _axes(x0, x1, y0, y1, w, h, left=50, top=28, bottom=30, xlabel="", ylabel="") -> tuple[list[str], callable, callable]:
    pw, ph = w - left - 15, h - top - bottom
    sx = (lambda x: left + (x - x0) / ((x1 - x0) or 1) * pw)
    sy = (lambda y: top + ph - (y - y0) / ((y1 - y0) or 1) * ph)
    body = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>']
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        body.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 13}" text-anchor="middle">{xv:.3g}</text>')
        body.append(f'<text x="{left - 4}" y="{sy(yv) + 3:.1f}" text-anchor="end">{yv:.3g}</text>')
    body.append(f'<text x="{left + pw / 2}" y="{h - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    body.append(f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
                f'text-anchor="middle">{html.escape(ylabel)}</text>')
    return body, sx, sy


def histogram_svg(series: dict[str, np.ndarray], title: str, xlabel: str, bins: int = 40) -> str:
    w, h = 560, 300
    values = [v[~np.isnan(v)] for v in series.values()]
    finite = np.concatenate(values) if values else np.array([])
    if not len(finite):
        return _svg(w, h, ['<text x="280" y="150" text-anchor="middle">no values</text>'], title)
    lo, hi = float(finite.min()), float(finite.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    counts = {name: np.histogram(v[~np.isnan(v)], edges)[0] for name, v in series.items()}
    top = max(1, max(int(c.max()) for c in counts.values()))
    body, sx, sy = _axes(edges[0], edges[-1], 0, top, w, h, xlabel=xlabel, ylabel="rows")
    for n, (name, c) in enumerate(counts.items()):
        color = CLASS_COLORS.get(name, "#1565c0")
        for i, count in enumerate(c):
            if count:
                x, x2 = sx(edges[i]), sx(edges[i + 1])
                body.append(f'<rect x="{x:.1f}" y="{sy(count):.1f}" width="{max(x2 - x - 1, 1):.1f}" '
                            f'height="{sy(0) - sy(count):.1f}" fill="{color}" fill-opacity="0.55"/>')
        body.append(f'<rect x="{w - 150}" y="{30 + 14 * n}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{w - 136}" y="{39 + 14 * n}">{html.escape(name)} ({int(c.sum())})</text>')
    return _svg(w, h, body, title)


def scatter_svg(x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str) -> str:
    w, h = 560, 300
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if not len(x):
        return _svg(w, h, ['<text x="280" y="150" text-anchor="middle">no values</text>'], title)
    if len(x) > PLOT_POINTS:
        pick = np.random.default_rng(0).choice(len(x), PLOT_POINTS, replace=False)
        x, y = x[pick], y[pick]
    body, sx, sy = _axes(float(x.min()), float(x.max()), float(y.min()), float(y.max()), w, h, xlabel=xlabel, ylabel=ylabel)
    body += [f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2" fill="#1565c0" fill-opacity="0.5"/>' for a, b in zip(x, y)]
    return _svg(w, h, body, title)


def bars_svg(labels: list[str], values: list[float], title: str) -> str:
    w, h = 560, max(120, 40 + 22 * len(labels))
    body = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 30 + 22 * i
        width = 0 if value is None else value * 330
        body.append(f'<text x="175" y="{y + 12}" text-anchor="end">{html.escape(label[:28])}</text>'
                    f'<rect x="180" y="{y}" width="{width:.1f}" height="16" fill="#2e7d32"/>'
                    f'<text x="{185 + width:.1f}" y="{y + 12}">{"n/a" if value is None else f"{value:.1%}"}</text>')
    return _svg(w, h, body, title)


def _cells(values, tag: str = "td", limit: int = 200) -> str:
    return "".join(f"<{tag}>{html.escape(_clip(v, limit))}</{tag}>" for v in values)


def _clip(value, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def signals_html(report: dict) -> str:
    """The reward signals' table (runs with several): AUROC against the verifier and mean score per class,
    then each pair's mean Spearman correlation within mixed groups."""
    section = report.get("reward_signals")
    if not section:
        return ""
    head = _cells(["signal", "AUROC pooled", "AUROC mean per group", "mean score correct", "mean score incorrect"],
                  "th")
    body = "".join("<tr>" + _cells([name + (" (fusion)" if name == section["fusion_rm"] else ""),
                                    s["auroc_vs_verifier"]["pooled"], s["auroc_vs_verifier"]["mean_per_group"],
                                    s["score_by_verifier_class"]["correct"].get("mean"),
                                    s["score_by_verifier_class"]["incorrect"].get("mean")]) + "</tr>"
                   for name, s in section["signals"].items())
    pairs = "".join("<tr>" + _cells([pair, v["mean"], v["groups"]]) + "</tr>"
                    for pair, v in section["spearman_within_mixed_groups"].items())
    return (f"<h2>reward signals</h2><table><tr>{head}</tr>{body}</table>"
            f"<table><tr>{_cells(['pair', 'mean Spearman within mixed groups', 'groups'], 'th')}</tr>{pairs}</table>")


def rules_html(report: dict) -> str:
    """The rule x data_source table of verdicts and the refusals on rows labelled correct."""
    verdicts = report.get("verdicts_by_rule_and_source")
    if verdicts is None:
        return ("<h2>Verdicts by rule</h2><p>No shard of this output has a verifier_rule column (written before "
                "the column existed): no counts per rule and no refusal listing.</p>")
    sources = sorted({source for counts in verdicts.values() for source in counts})
    rows = [f"<tr>{_cells(['rule', *sources, 'total'], 'th')}</tr>"]
    for rule, counts in verdicts.items():
        rows.append(f"<tr><th>{html.escape(rule)}</th>"
                    f"{_cells([counts.get(s, 0) for s in sources] + [sum(counts.values())])}</tr>")
    rows.append(f"<tr><th>total</th>{_cells([sum(c.get(s, 0) for c in verdicts.values()) for s in sources])}"
                f"<td>{sum(sum(c.values()) for c in verdicts.values())}</td></tr>")
    parts = ["<h2>Verdicts by rule</h2><p>Rows with a verdict (status ok or no_answer), by the rule that decided "
             "it and data_source.</p>", f"<table>{''.join(rows)}</table>", "<h2>Refusals on rows labelled correct</h2>"]
    refusals = report["refusals_on_labelled_correct"]
    if refusals["label_column"] is None:
        parts.append(f"<p>The output has no boolean {LABEL} column: refusals cannot be checked against labels.</p>")
        return "".join(parts)
    listed = refusals["rows"]
    parts.append(f"<p>{refusals['total']} refusals fired on rows {html.escape(LABEL)} calls correct"
                 + (f"; the first {min(len(listed), REFUSALS_SHOWN)} are listed (run_report.json lists up to "
                    f"{REFUSALS_LISTED:,})" if refusals["total"] > REFUSALS_SHOWN else "") + ".</p>")
    if refusals["by_rule"]:
        by_rule = [f"<tr>{_cells(['rule', 'labelled correct', 'labelled incorrect', 'unlabelled'], 'th')}</tr>"]
        by_rule += [f"<tr><th>{html.escape(rule)}</th>{_cells(counts.values())}</tr>"
                    for rule, counts in refusals["by_rule"].items()]
        parts.append(f"<table>{''.join(by_rule)}</table>")
    if listed:
        columns = ["prompt_id", "data_source", "rule", "extracted_answer", "reference"]
        lines = [f"<tr>{_cells(columns, 'th')}</tr>"]
        lines += [f"<tr>{_cells([row[c] for c in columns])}</tr>" for row in listed[:REFUSALS_SHOWN]]
        parts.append(f"<table>{''.join(lines)}</table>")
    return "".join(parts)


def render_html(report: dict, table: pa.Table, classes: np.ndarray) -> str:
    rm = table.column("rm_score").to_numpy(zero_copy_only=False).astype(float)
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(float)
    present = [c for c in ("correct", "incorrect", "unverified") if (classes == c).any()]
    plots = [
        ("RM score by verifier class", histogram_svg({c: rm[classes == c] for c in ("correct", "incorrect", "unverified")
                                                      if (classes == c).any()}, "RM score by verifier class", "rm_score")),
        (f"{report['reward_column']} by verifier class", histogram_svg(
            {c: reward[classes == c] for c in present}, f"{report['reward_column']} by verifier class "
            f"(--fusion {report['fusion']})", report["reward_column"])),
        *([("difficulty weight", scatter_svg(
            table.column("group_rm_std").to_numpy(zero_copy_only=False).astype(float),
            table.column("difficulty_weight").to_numpy(zero_copy_only=False).astype(float),
            "difficulty weight against sigma_u", "sigma_u (group_rm_std)", "w"))] if report["fusion"] == "hero" else []),
        ("pass rate", bars_svg(list(report["verifier_pass_rate_by_source"]),
                               [v["pass_rate"] for v in report["verifier_pass_rate_by_source"].values()],
                               "verifier pass rate by data_source")),
    ]
    auc = report["rm_vs_verifier_auroc"]
    summary = [("fusion", f"{report['fusion']} ({report['reward_column']})"), ("input rows", report["input_rows"]), ("output rows", report["output_rows"]),
               ("error rows", report["error_rows"]), ("σ̄", report["sigma_bar"]),
               ("RM vs verifier AUROC (pooled, mixed groups)", auc["pooled"]),
               ("RM vs verifier AUROC (mean per group)", auc["mean_per_group"]), ("mixed groups", auc["mixed_groups"]),
               ("wall time (s)", report["wall_s"]),
               *([("medians, AUROCs and plots over a sample of", f"{report['sample']['rows']:,} rows in "
                   f"{report['sample']['groups']:,} whole groups")] if report["sample"]["fraction"] < 1 else [])]
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
    images = "".join(f'<figure><img alt="{html.escape(name)}" src="{uri}"><figcaption>{html.escape(name)}</figcaption></figure>'
                     for name, uri in plots)
    refusals = report.get("refusals_on_labelled_correct")
    if refusals and len(refusals["rows"]) > REFUSALS_SHOWN:  # the page shows no more rows than its own table
        report = {**report, "refusals_on_labelled_correct": {**refusals, "rows": refusals["rows"][:REFUSALS_SHOWN]}}
    details = html.escape(json.dumps(report, indent=2, default=str))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>herolabel run report</title><style>"
            "body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}figure{display:inline-block;margin:8px}"
            "pre{background:#f5f5f5;padding:8px;overflow:auto}</style></head><body>"
            f"<h1>herolabel run report</h1><table>{rows}</table>{images}{signals_html(report)}{rules_html(report)}{judge_html(report)}"
            f"<h2>run_report.json</h2><pre>{details}</pre></body></html>")


def write_report(output: str, manifest: dict) -> dict:
    """Writes OUTPUT/run_report.json and OUTPUT/report.html; returns the report."""
    report, table, classes = build_report(output, manifest)
    with fsio.open_atomic(fsio.join(output, "run_report.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=_json_default)
    with fsio.open_atomic(fsio.join(output, "report.html"), "w") as handle:
        handle.write(render_html(report, table, classes))
    return report


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def rebuild(output: str) -> dict:
    """`herolabel report OUTPUT`: both files again from an existing output and its manifest."""
    fs, path = fsspec.core.url_to_fs(output)
    if not fs.exists(f"{path}/manifest.json"):
        raise FileNotFoundError(f"{output} has no manifest.json: not a finished herolabel output")
    with fs.open(f"{path}/manifest.json", "r") as handle:
        manifest = json.load(handle)
    return write_report(output, manifest)
