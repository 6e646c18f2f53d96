"""Judge functions for exercising the verifier pool's failure handling with real worker processes.

Each is named in VerifierConfig.judge ("judges:NAME") and imported inside the spawned worker.
"""

import os
import time

from transforms.verify.math import judge_response


def hangs_on_marker(gold, response, timeout_s):
    """Real math-verify, except a response containing HANG blocks forever (no signal alarm is armed)."""
    if "HANG" in response:
        while True:
            time.sleep(60)
    return judge_response(gold, response, timeout_s)


def dies_on_marker(gold, response, timeout_s):
    """Real math-verify, except a response containing CRASH kills the worker process outright."""
    if "CRASH" in response:
        os._exit(3)
    return judge_response(gold, response, timeout_s)


def errors_on_marker(gold, response, timeout_s):
    """Real math-verify, except a response containing ERRMARK is reported as a verifier error."""
    if "ERRMARK" in response:
        return None, "error", None
    return judge_response(gold, response, timeout_s)


def length_matches(reference, response, timeout_s):
    """A custom per-data_source verifier (by import path): correct when the lengths match."""
    return (1.0 if len(reference) == len(response) else 0.0), "ok", str(len(response))


def question_mentions_answer(reference, response, timeout_s, question=None):
    """A custom verifier that asks for the question: correct when the response's last word is in it."""
    last = response.split()[-1]
    return (1.0 if question and last in question else 0.0), "ok", last
