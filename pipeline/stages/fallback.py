"""The fallback stage: a small judge model asked about the rows the rules rejected (transforms/judge), placed by
its resources (a GPU worker), after the verify stage and before the score stage.

Per batch: the gate (transforms.judge.gated_rows) picks the rows; none picked costs a few Arrow kernels and
one null column (about 1 ms per 4,096 rows). The judge's verdicts are cached by content under --cache-dir
in a namespace of their own (judge identity, backend, dtype, template and parser, token limits), apart from
the rules' verdict cache; the key is (question, gold, answer) as quoted for the judge. The model is loaded
when the first row the cache cannot answer arrives, not before: a run with nothing to ask never loads it.
Counters: fallback_gated (rows that passed the gate), fallback_judged (sent to the model), fallback_cached.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from pipeline.storage.content_cache import ContentCache, content_keys, locality_of
from pipeline.stages.base import MetricsSink, Resources, WorkerContext, timed
from schemas.rollouts import FALLBACK_FIELDS, PROMPT, REFERENCE
from transforms.judge import JudgeConfig, apply_verdicts, gated_rows, judge_backend
from transforms.judge.templates import quoted_fields
from transforms.verify import question_texts

FALLBACK_VALUES = pa.schema(FALLBACK_FIELDS)


class FallbackStage:
    """fallback_verdict for every row (null where the gate kept the judge out); in addon mode the judge's
    "correct" also turns the rule's 0 into 1 (transforms.judge.apply_verdicts)."""

    name = "fallback"

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.backend = judge_backend(config)
        self.resources = Resources(accelerator=self.backend.needs_accelerator)
        self.template = config.load_template()
        self.loaded = False
        self.cache: ContentCache | None = None

    def setup(self, context: WorkerContext) -> None:
        self._lock = threading.Lock()  # made here: the stage travels to workers inside the plan
        if self.config.cache_dir:
            identity = {"cache": "fallback-verdicts", **self.backend.cache_identity(), "template": self.template.name,
                        "template_sha256": self.template.digest(), "max_length": self.config.max_length}
            self.cache = ContentCache(self.config.cache_dir, identity, FALLBACK_VALUES)

    def process(self, table: pa.Table, sink: MetricsSink) -> pa.Table:
        with self._lock, timed(sink, "fallback"):
            gate = gated_rows(table, REFERENCE)
            verdicts: list[str | None] = [None] * table.num_rows
            rows = np.flatnonzero(gate)
            if len(rows):
                sink.count("fallback_gated", len(rows))
                for row, verdict in zip(rows, self._judge(table.take(pa.array(rows, pa.int64())), sink)):
                    verdicts[row] = verdict
            return apply_verdicts(table, verdicts, self.config)

    def _judge(self, gated: pa.Table, sink: MetricsSink) -> list[str]:
        """The verdict of every gated row: the cache first, the judge for the rest."""
        questions = question_texts(gated.column(PROMPT).to_pylist())
        golds = gated.column(REFERENCE).to_pylist()
        answers = gated.column("extracted_answer").to_pylist()
        verdicts = np.full(gated.num_rows, None, dtype=object)
        missed = np.arange(gated.num_rows)
        if self.cache is not None:
            fields = [quoted_fields(q, g, a) for q, g, a in zip(questions, golds, answers)]
            keys = content_keys(*([f[name] for f in fields] for name in ("question", "gold", "answer")))
            locality = locality_of(gated)
            hit, cached = self.cache.lookup(keys, locality)
            verdicts[hit] = cached.column("fallback_verdict").to_pylist()
            sink.count("fallback_cached", int(hit.sum()))
            missed = np.flatnonzero(~hit)
        if len(missed):
            if not self.loaded:
                self.backend.load()  # the first row the cache cannot answer: only now is the model needed
                self.loaded = True
            prompts = [self.template.render(questions[i], golds[i], answers[i]) for i in missed]
            replies = self.backend.generate(prompts, self.template)
            verdicts[missed] = [self.template.verdict(reply) for reply in replies]
            sink.count("fallback_judged", len(missed))
            sent = np.array([reply is not None for reply in replies], dtype=bool)
            if self.cache is not None and sent.any():  # a prompt that was not sent is asked again next time
                values = pa.table({"fallback_verdict": pa.array(list(verdicts[missed][sent]), pa.string())},
                                  schema=FALLBACK_VALUES)
                self.cache.store(keys[missed][sent], values, locality)
        return verdicts.tolist()

    def close(self) -> None:
        if self.loaded:
            self.backend.close()
            self.loaded = False
