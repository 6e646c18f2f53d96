"""The fallback judge's part of the run report (run_report.json's "fallback_judge", a section of report.html).

With a fallback_verdict column (--fallback-verifier): the final verdicts per deciding source ("rule": the
verifier's rules; "model": the judge, in addon mode, verifier_rule model:<name>) per data_source, the judge's
verdicts (correct, incorrect, invalid, unparsed) per data_source, its flip rate (rows it called correct over
rows it judged: in addon mode the rule 0s it turned into 1s, in report mode the ones it would have), and up to
SAMPLES_PER_VERDICT sample rows of each verdict (question cut to SAMPLE_CHARS, extracted answer, gold).
Tallied shard by shard like the rule table (pipeline/outputs/report.py's RuleTally): counts and the samples
only, so memory does not grow with the output; the text columns of a shard are read only while it still has
samples to give.
"""

from __future__ import annotations

import html
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.outputs.report_stats import MISSING
from schemas.rollouts import VERDICT_STATUSES, FallbackVerdict
from transforms.judge import MODEL_RULE
from transforms.verify import question_texts

VERDICT = "fallback_verdict"
RULE = "verifier_rule"
SAMPLES_PER_VERDICT = 5
SAMPLE_CHARS = 300


class JudgeTally:
    """The fallback judge's counts and samples, added shard by shard (the same calls as RuleTally)."""

    def __init__(self):
        self.present = False
        self.final: Counter = Counter()  # (source rule/model, data_source, verdict correct/incorrect) -> rows
        self.judged: Counter = Counter()  # (data_source, judge verdict) -> rows
        self.samples: dict[str, list[dict]] = {v: [] for v in FallbackVerdict.values()}

    def columns(self, schema: pa.Schema) -> list[str]:
        """The columns a shard must be read with besides report.COLUMNS: none without a judge."""
        return [VERDICT, RULE] if VERDICT in schema.names and RULE in schema.names else []

    def add(self, table: pa.Table, extra: pa.Table, parquet: pq.ParquetFile) -> None:
        """One shard: `table` its report.COLUMNS, `extra` the columns() of it, `parquet` the file (for samples)."""
        if VERDICT not in extra.column_names:
            return
        self.present = True
        sources = pc.fill_null(table.column("data_source").cast(pa.string()), MISSING)
        verdicts = extra.column(VERDICT).cast(pa.string())
        by_model = pc.fill_null(pc.starts_with(extra.column(RULE).cast(pa.string()), MODEL_RULE), False)
        decided = pc.fill_null(pc.is_in(table.column("verifier_status"),
                                        value_set=pa.array(list(VERDICT_STATUSES), pa.string())), False)
        final = pa.table({"source": pc.if_else(by_model, "model", "rule"), "data_source": sources,
                          "verdict": pc.if_else(pc.equal(table.column("verifier_score"), 1.0), "correct", "incorrect")})
        for source, data_source, verdict, n in _counts(final.filter(decided), ["source", "data_source", "verdict"]):
            self.final[(source, data_source, verdict)] += n
        called = pc.is_valid(verdicts)
        judged = pa.table({"data_source": sources, "verdict": verdicts}).filter(called)
        for data_source, verdict, n in _counts(judged, ["data_source", "verdict"]):
            self.judged[(data_source, verdict)] += n
        self._sample(table, verdicts, parquet)

    def _sample(self, table: pa.Table, verdicts: pa.ChunkedArray, parquet: pq.ParquetFile) -> None:
        wanted = {v: SAMPLES_PER_VERDICT - len(rows) for v, rows in self.samples.items()}
        picks: list[tuple[str, int]] = []
        for verdict, room in wanted.items():
            if room > 0:
                hits = pc.indices_nonzero(pc.fill_null(pc.equal(verdicts, verdict), False)).to_pylist()
                picks += [(verdict, i) for i in hits[:room]]
        if not picks:
            return
        names = parquet.schema_arrow.names
        texts = parquet.read(columns=[c for c in ("prompt", "extracted_answer", "reference") if c in names])
        texts = texts.take(pa.array([i for _, i in picks], pa.int64()))
        columns = {c: texts.column(c).to_pylist() if c in texts.column_names else [None] * len(picks)
                   for c in ("prompt", "extracted_answer", "reference")}
        questions = question_texts(columns["prompt"])  # what the judge was shown of each prompt
        for n, (verdict, row) in enumerate(picks):
            self.samples[verdict].append({
                "prompt_id": table.column("prompt_id")[row].as_py(),
                "data_source": table.column("data_source")[row].as_py(),
                "question": _clip(questions[n]),
                "extracted_answer": _clip(columns["extracted_answer"][n]),
                "reference": _clip(columns["reference"][n])})

    def section(self, manifest: dict) -> dict | None:
        """run_report.json's "fallback_judge" (None when no shard has a fallback_verdict column)."""
        if not self.present:
            return None
        final: dict[str, dict[str, dict[str, int]]] = {}
        for (source, data_source, verdict), n in sorted(self.final.items()):
            final.setdefault(data_source, {}).setdefault(source, {"correct": 0, "incorrect": 0})[verdict] += n
        judged: dict[str, dict[str, int]] = {}
        for (data_source, verdict), n in sorted(self.judged.items()):
            judged.setdefault(data_source, dict.fromkeys(FallbackVerdict.values(), 0))[verdict] = n
        total = sum(self.judged.values())
        correct = sum(n for (_, verdict), n in self.judged.items() if verdict == FallbackVerdict.CORRECT)
        judge = manifest.get("fallback_verifier") or {}
        return {"judge": judge.get("name"), "mode": judge.get("mode"), "template": judge.get("template"),
                "rows": judge.get("rows"), "final_verdicts_by_source": final, "judge_verdicts": judged,
                "judged_rows": total, "flip_rate": round(correct / total, 6) if total else None,
                "samples": self.samples}


def _counts(table: pa.Table, keys: list[str]):
    counts = table.group_by(keys).aggregate([([], "count_all")])
    return zip(*(counts.column(c).to_pylist() for c in (*keys, "count_all")))


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def judge_html(report: dict) -> str:
    """The report.html section: empty without a judge."""
    section = report.get("fallback_judge")
    if not section:
        return ""
    cells = lambda values, tag="td": "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)  # noqa: E731
    rate = "n/a" if section["flip_rate"] is None else f"{section['flip_rate']:.2%}"
    applied = ("applied: each turned a rule 0 into 1" if section["mode"] == "addon"
               else "not applied (report mode): every fusion used the rule verdict")
    parts = [f"<h2>Fallback judge</h2><p>{html.escape(str(section['judge']))}, template "
             f"{html.escape(str(section['template']))}: {section['judged_rows']} rows judged, flip rate {rate} "
             f"(verdict correct; {applied}).</p>"]
    verdicts = FallbackVerdict.values()
    rows = [f"<tr>{cells(['data_source', *verdicts], 'th')}</tr>"]
    rows += [f"<tr><th>{html.escape(s)}</th>{cells(c[v] for v in verdicts)}</tr>"
             for s, c in section["judge_verdicts"].items()]
    parts.append(f"<h3>Judge verdicts by data_source</h3><table>{''.join(rows)}</table>")
    rows = [f"<tr>{cells(['data_source', 'decided by', 'correct', 'incorrect'], 'th')}</tr>"]
    rows += [f"<tr><th>{html.escape(s)}</th>{cells([source, c['correct'], c['incorrect']])}</tr>"
             for s, by_source in section["final_verdicts_by_source"].items() for source, c in by_source.items()]
    parts.append(f"<h3>Final verdicts by deciding source</h3><table>{''.join(rows)}</table>")
    for verdict, samples in section["samples"].items():
        if samples:
            columns = ["prompt_id", "data_source", "question", "extracted_answer", "reference"]
            lines = [f"<tr>{cells(columns, 'th')}</tr>"] + [f"<tr>{cells(s[c] for c in columns)}</tr>" for s in samples]
            parts.append(f"<h3>Sample rows judged {html.escape(verdict)}</h3><table>{''.join(lines)}</table>")
    return "".join(parts)
