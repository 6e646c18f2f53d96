"""A deterministic fallback judge for tests, behind the JudgeBackend interface; registered in one line, below.

It reads the answer and gold back out of the prompt it is sent (the tinyv, compass and general-verifier field
formats), so what it decides depends on what the template let through: "correct" when the answer, unescaped
and normalized (case, `$`, `\\text{}`, spaces, number words), equals the gold; "invalid" for an answer holding
[[invalid]]; a reply no parser reads for one holding [[garble]]; "incorrect" otherwise. With
HEROLABEL_TEST_JUDGE_LOG set, every prompt it receives is appended to that file as a JSON line (worker
processes of an engine included), so a test sees exactly what reached the judge.
"""

from __future__ import annotations

import html
import json
import os
import re

from transforms.judge import JudgeBackend, register_judge_backend

LOG_ENV = "HEROLABEL_TEST_JUDGE_LOG"
FIELDS = {  # template -> (answer field, gold field) patterns
    "tinyv": (r"<model_answer>(.*?)</model_answer>", r"<ground_truth_answer>(.*?)</ground_truth_answer>"),
    "compass": (r"<Candidate's Answer Begin>: (.*?) <Candidate's Answer End>",
                r"<Standard Answer Begin>: (.*?) <Standard Answer End>"),
    "general-verifier": (r"### Student Answer: (.*?)\n\n", r"### Ground Truth Answer: (.*?)\n\n"),
}
REPLIES = {
    "tinyv": {"correct": "True", "incorrect": "False"},
    "compass": {"correct": "A", "incorrect": "B", "invalid": "C"},
    "general-verifier": {"correct": "The forms agree.\nFinal Decision: Yes", "incorrect": "Final Decision: No"},
}
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def normalize(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", html.unescape(text)).replace("$", "").lower().strip().rstrip(".")
    return NUMBER_WORDS.get(text, re.sub(r"\s+", "", text))


def decide(answer: str, gold: str) -> str:
    if "[[invalid]]" in answer:
        return "invalid"
    if "[[garble]]" in answer:
        return "garble"
    return "correct" if normalize(answer) == normalize(gold) else "incorrect"


class ScriptedJudge(JudgeBackend):
    loads = 0  # load() calls in this process

    def identity(self) -> dict:
        return {"backend": "scripted", "name": self.config.model}

    def load(self) -> None:
        type(self).loads += 1

    def generate(self, prompts, template):
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"template": template.name, "prompt": p}) + "\n" for p in prompts)
        answer_field, gold_field = FIELDS[template.name]
        replies = []
        for prompt in prompts:
            answer, gold = re.search(answer_field, prompt, re.S), re.search(gold_field, prompt, re.S)
            kind = decide(answer.group(1), gold.group(1)) if answer and gold else "garble"
            replies.append(REPLIES[template.name].get(kind, "I cannot tell."))
        return replies


register_judge_backend("scripted", "fake_judge:ScriptedJudge")
