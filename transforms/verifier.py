"""Rule-based verification with HuggingFace math-verify, in worker processes with hard time limits.

math-verify enforces its own timeouts with signal.alarm, which works only in a process's main thread,
and a pathological answer can still hang it. So every call runs in the main thread of a worker
process, and the parent kills and replaces any worker that has made no progress for
`hard_timeout_s`: the stuck row gets status "timeout", the rest of its work is re-queued.

Workers are plain subprocesses (a fresh interpreter talking over a socket pair), not multiprocessing
children: Dask workers started the default way are daemonic processes, which may not start
multiprocessing children, and the same pool must run under every engine.

Speed: about 1-4 ms per response per worker on real GSM8K/MATH outputs; each distinct reference is
parsed once per worker (LRU cache), not once per response.
"""

from __future__ import annotations

import inspect
import logging
import math
import mmap
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from schemas.rollouts import DATA_SOURCE, PROMPT, REFERENCE, RESPONSE, VERDICT_STATUSES, VERIFIER_FIELDS, VerifierStatus
from transforms import answers
from transforms.answers import choice_letter, clean_text, final_answer, normalize
from transforms.checks import is_finite_number, is_whole
from transforms.math_judge import (MAX_EXTRACTED_CHARS, Verdict, answer_letter, judge_response, parse_latex,
                                   parse_reference)

__all__ = ["VerifierConfig", "VerifierPool", "Verdict", "judge_response", "verify_table", "question_texts"]

log = logging.getLogger(__name__)

# The question a verifier sees: the prompt's text (a chat's last user message), its last characters only
# (a few-shot prompt ends with the question asked).
QUESTION_MAX_CHARS = 8000
_REFERENCE_CACHE_SIZE = 4096
_STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class VerifierConfig:
    """Settings of the verifier stage.

    num_workers: worker processes (None = resolved where the stage runs: that host's cores divided by
    the engine's worker processes there; 0 = run in the calling thread, which must be a main thread, so
    only for direct use of the pool, never in a pipeline run).
    timeout_s: math-verify's own per-parse / per-comparison timeout; whole seconds (it uses signal.alarm).
    hard_timeout_s: wall-clock limit per response, enforced by killing the worker.
    task_size: responses sent to a worker per message; larger amortizes IPC, smaller balances load.
    judge: "module:function" judging one response for the "math" verifier, (gold, response, timeout_s[,
    question=...]) -> (score, status, answer[, rule]); the default is transforms.math_judge's judge_response
    (kept importable from this module). The worker imports it by name.
    sources: which verifier judges which data_source, "SOURCE=VERIFIER,..." (others use "math"):
    "math", "exact" (string equality of the final answer), "numeric:TOL" (absolute tolerance TOL),
    "choice" (multiple-choice letter), or "package.module:function" taking (reference, response,
    timeout_s) -> (score, status, extracted), and the row's question too when it has a `question`
    parameter. Its verifier_rule is its name.
    """

    num_workers: int | None = None
    timeout_s: int = 5
    hard_timeout_s: float = 30.0
    task_size: int = 32
    judge: str = "transforms.verifier:judge_response"
    sources: str = ""

    def __post_init__(self):
        if self.num_workers is not None and not is_whole(self.num_workers, 0):
            raise ValueError(f"verifier.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not is_whole(self.timeout_s, 1):
            raise ValueError(
                f"verifier.timeout_s must be a whole number of seconds >= 1 (math-verify uses signal.alarm), "
                f"got {self.timeout_s!r}"
            )
        if not is_finite_number(self.hard_timeout_s) or self.hard_timeout_s <= self.timeout_s:
            raise ValueError(
                f"verifier.hard_timeout_s must be a number greater than timeout_s ({self.timeout_s}), "
                f"got {self.hard_timeout_s!r}"
            )
        if not is_whole(self.task_size, 1):
            raise ValueError(f"verifier.task_size must be an integer >= 1, got {self.task_size!r}")
        if not isinstance(self.judge, str) or not re.fullmatch(r"[\w.]+:\w+", self.judge):
            raise ValueError(f"verifier.judge must look like 'package.module:function', got {self.judge!r}")
        if isinstance(self.sources, dict):  # YAML mapping form
            object.__setattr__(self, "sources", ",".join(f"{k}={v}" for k, v in self.sources.items()))
        if not isinstance(self.sources, str):
            raise ValueError(f"verifier.sources must look like 'SOURCE=VERIFIER,...', got {self.sources!r}")
        try:
            for verifier in self.source_verifiers().values():
                check_verifier_name(verifier)
                if ":" in verifier and not verifier.startswith("numeric:"):
                    _import(verifier)  # a custom verifier that cannot be imported fails before any data moves
        except (ValueError, ImportError, AttributeError) as exc:
            raise ValueError(f"verifier.sources: {exc}") from None

    def source_verifiers(self) -> dict[str, str]:
        """data_source -> verifier name, from `sources` ("gsm8k=numeric:0.01,mmlu=choice")."""
        mapping = {}
        for item in filter(None, (part.strip() for part in (self.sources or "").split(","))):
            source, sep, verifier = item.partition("=")
            if not sep or not source.strip() or not verifier.strip():
                raise ValueError(f"verifier.sources entries look like SOURCE=VERIFIER, got {item!r}")
            mapping[source.strip()] = verifier.strip()
        return mapping

    def resolved_workers(self, processes_on_host: int = 1) -> int:
        """num_workers, or (when unset) this host's usable cores divided by the engine processes on it."""
        if self.num_workers is not None:
            return self.num_workers
        return max(1, usable_cores() // max(1, processes_on_host))

    def load_judge(self):
        """The judge function named by `judge`."""
        return _import(self.judge)


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup cpusets), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------
# Verifiers by data_source: "math" (the default, judge_response), "exact", "numeric:TOL", "choice", or a
# custom "package.module:function" taking (reference, response, timeout_s[, question]) -> (score, status, extracted).
# ---------------------------------------------------------------------------------------------------

def _exact_form(text: str) -> str:
    return " ".join(answers.strip_delimiters(clean_text(text)).split())


def judge_exact(gold: str, response: str, timeout_s: int):
    """The final answer, delimiters and runs of whitespace aside, must equal the reference string."""
    found, _ = final_answer(clean_text(response))
    if found is None:
        return 0.0, VerifierStatus.NO_ANSWER, None
    answer = _exact_form(found)
    return (1.0 if answer == gold else 0.0), VerifierStatus.OK, answer[:MAX_EXTRACTED_CHARS]


def _number(text: str, timeout_s: int) -> float | None:
    """A real number from an answer or reference (normalized, then math-verify's parse, evaluated)."""
    import sympy

    normalized, _ = normalize(clean_text(text))
    if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", normalized):
        return float(normalized)
    for value in parse_latex(normalized, timeout_s):
        if isinstance(value, sympy.Basic) and value.is_number and value.is_real:
            return float(sympy.N(value, 30))
    return None


def _numeric_gold(reference: str, timeout_s: int):
    value = _number(reference, timeout_s)
    return None if value is None or not math.isfinite(value) else value


def judge_numeric(tolerance: float, gold: float, response: str, timeout_s: int):
    """|answer - reference| <= tolerance (absolute, stated in the config)."""
    found, _ = final_answer(clean_text(response))
    value = _number(found, timeout_s) if found is not None else None
    if value is None:
        return 0.0, VerifierStatus.NO_ANSWER, (found or None) and found[:MAX_EXTRACTED_CHARS]
    return (1.0 if abs(value - gold) <= tolerance else 0.0), VerifierStatus.OK, repr(value)


def judge_choice(gold: str, response: str, timeout_s: int, question: str | None = None):
    """The option letter of the final answer ("(B)", "B", "The answer is (C) 12") must be the reference's;
    an answer giving one listed option's value ("12" where the question lists "(B) 12") names that option."""
    letter = answer_letter(final_answer(clean_text(response))[0], question, timeout_s)
    if letter is None:
        return 0.0, VerifierStatus.NO_ANSWER, None
    return (1.0 if letter == gold else 0.0), VerifierStatus.OK, letter


def check_verifier_name(name: str) -> None:
    """Raises ValueError unless `name` is a known verifier (numeric needs an absolute tolerance >= 0)."""
    if name in ("math", "exact", "choice"):
        return
    if name.startswith("numeric:"):
        try:
            tolerance = float(name.split(":", 1)[1])
        except ValueError:
            tolerance = -1.0
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"numeric verifier needs an absolute tolerance >= 0, as 'numeric:0.01', got {name!r}")
        return
    if not re.fullmatch(r"[\w.]+:\w+", name):
        raise ValueError(f"unknown verifier {name!r}: use math, exact, numeric:TOL, choice or package.module:function")


def _import(path: str):
    import importlib

    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def _takes_question(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function: called the old way
        return False
    return "question" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _verdict_judge(judge, rule: str):
    """`judge` as (gold, response, timeout_s, question) -> Verdict: the question passed only to a judge
    that takes one; a judge returning (score, status, answer) gets `rule` as its verifier_rule."""
    takes_question = _takes_question(judge)

    def run(gold, response: str, timeout_s: int, question: str | None) -> Verdict:
        result = judge(gold, response, timeout_s, question=question) if takes_question else judge(gold, response, timeout_s)
        score, status, answer, *decided = result
        decided_by = decided[0] if decided else rule
        return Verdict(score, status, answer, decided_by if status in VERDICT_STATUSES else None)

    return run


def make_verifier(name: str, math_judge=None, math_judge_name: str = "math"):
    """(prepare(reference, timeout_s) -> gold or None, judge(gold, response, timeout_s, question) -> Verdict)
    for `name`."""
    if name == "math":
        return parse_reference, _verdict_judge(math_judge or judge_response, math_judge_name)
    if name == "exact":
        return (lambda reference, timeout_s: _exact_form(reference) or None), _verdict_judge(judge_exact, name)
    if name == "choice":
        return (lambda reference, timeout_s: choice_letter(clean_text(reference))), _verdict_judge(judge_choice, name)
    if name.startswith("numeric:"):
        tolerance = float(name.split(":", 1)[1])
        return _numeric_gold, _verdict_judge(
            lambda gold, response, timeout_s: judge_numeric(tolerance, gold, response, timeout_s), name)
    return (lambda reference, timeout_s: reference), _verdict_judge(_import(name), name)


class _ReferenceCache:
    """Prepared references per (verifier, reference), least recently used evicted; failures cached too."""

    def __init__(self, timeout_s: int, judge=judge_response, size: int = _REFERENCE_CACHE_SIZE,
                 judge_name: str = "math"):
        self.timeout_s = timeout_s
        self.math_judge = judge
        self.math_judge_name = judge_name
        self.size = size
        self._verifiers: dict[str, tuple] = {}
        self._prepared: OrderedDict[tuple[str, str], tuple[object, str | None]] = OrderedDict()

    def verifier(self, name: str):
        if name not in self._verifiers:
            self._verifiers[name] = make_verifier(name, self.math_judge, self.math_judge_name)
        return self._verifiers[name]

    def get(self, verifier: str, reference: str) -> tuple[object, str | None]:
        """(prepared gold, None) or (None, failure status)."""
        from math_verify.errors import TimeoutException

        key = (verifier, reference)
        hit = self._prepared.get(key)
        if hit is not None:
            self._prepared.move_to_end(key)
            return hit
        prepare, _ = self.verifier(verifier)
        try:
            prepared = prepare(reference, self.timeout_s)
            entry = (prepared, None if prepared is not None else VerifierStatus.BAD_REFERENCE)
        except TimeoutException:
            entry = (None, VerifierStatus.BAD_REFERENCE)
        except Exception:  # noqa: BLE001 - an unparseable reference is a data problem, reported per row
            entry = (None, VerifierStatus.BAD_REFERENCE)
        self._prepared[key] = entry
        if len(self._prepared) > self.size:
            self._prepared.popitem(last=False)
        return entry


def judge_task(cache: _ReferenceCache, verifier: str, reference: str, responses: list[str],
               questions: list[str | None] | None = None):
    """Yields one Verdict per response of a task sharing `verifier` and `reference` (questions aligned
    with responses, or None)."""
    from math_verify.errors import TimeoutException

    gold, failure = cache.get(verifier, reference)
    _, judge = cache.verifier(verifier)
    for k, response in enumerate(responses):
        if failure is not None:
            yield Verdict(None, failure, None, None)
            continue
        try:
            yield judge(gold, response, cache.timeout_s, questions[k] if questions else None)
        except TimeoutException:
            yield Verdict(None, VerifierStatus.TIMEOUT, None, None)
        except Exception as exc:  # noqa: BLE001 - a verifier failing on one row is that row's error, not the worker's
            yield Verdict(None, VerifierStatus.ERROR, f"{verifier}: {type(exc).__name__}: {exc}"[:MAX_EXTRACTED_CHARS], None)


def _quiet_math_verify_logs():
    # On timeout math-verify logs the whole input string at WARNING; statuses carry that information.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


# Results go back in messages of several rows (one every RESULT_FLUSH_S at most, and at a task's end):
# one message per row cost the parent about 6% of a 2-core host. Which row a worker is on is written to
# a 16-byte shared file before each row, so a hang or a crash is still blamed on exactly that row.
RESULT_FLUSH_S = 0.02
_PROGRESS = struct.Struct("<qq")  # (task id, position in the task)


def _subprocess_main(fd: int, progress_fd: int):
    """Entry point of a worker subprocess: its socket is file descriptor `fd`, its progress file
    `progress_fd`; the config comes first."""
    conn = Connection(fd)
    progress = mmap.mmap(progress_fd, _PROGRESS.size)
    _worker_main(conn, pickle.loads(conn.recv_bytes()), progress)


def _worker_main(conn, config: VerifierConfig, progress=None):
    """Worker process loop: receive (task_id, verifier, reference, [response]) and answer in order."""
    try:
        _quiet_math_verify_logs()
        cache = _ReferenceCache(config.timeout_s, config.load_judge(), judge_name=config.judge)
        list(judge_task(cache, "math", "1", ["The answer is $\\boxed{1}$."]))  # warm up the grammar before timing
        conn.send(("ready",))
    except BaseException:  # noqa: BLE001 - report why the worker cannot start, then exit
        conn.send(("fatal", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task_id, verifier, reference, responses, questions = message
        results = judge_task(cache, verifier, reference, responses, questions)
        pending, flushed = [], time.monotonic()
        for position in range(len(responses)):
            if progress is not None:
                _PROGRESS.pack_into(progress, 0, task_id, position)
            pending.append((position, *next(results)))
            now = time.monotonic()
            if now - flushed >= RESULT_FLUSH_S or position == len(responses) - 1:
                conn.send(("results", task_id, pending))
                pending, flushed = [], now


# ---------------------------------------------------------------------------------------------------
# The pool: parent side.
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Task:
    task_id: int
    verifier: str
    reference: str
    rows: list[int]  # row positions in the caller's batch, in the order the worker answers them
    responses: list[str]
    questions: list[str | None] | None = None
    answered: int = 0


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    progress: mmap.mmap | None = None  # (task id, position) of the row the worker is on
    ready: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    inflight: deque = field(default_factory=deque)


class Verdicts(NamedTuple):
    """Verdicts of a batch, as aligned lists."""

    scores: list
    statuses: list
    extracted: list
    rules: list


class VerifierPool:
    """Worker processes running math-verify; use as a context manager or call start()/close().

    verify(references, responses) blocks until every row has a result. Each worker holds at most two
    tasks (one running, one queued) so a killed worker loses little and load stays balanced. verify() may
    be called from several threads (engines share one pool per worker process); calls run one at a time,
    each using every worker. `num_workers` is the resolved worker count (see VerifierConfig).
    """

    def __init__(self, config: VerifierConfig, num_workers: int | None = None):
        self.config = config
        self.num_workers = config.resolved_workers() if num_workers is None else num_workers
        self._workers: list[_Worker] = []
        self._next_task_id = 0
        self._lock = threading.Lock()
        self.restarts = 0
        self._reference_cache: _ReferenceCache | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        if self.num_workers == 0:
            _quiet_math_verify_logs()
            self._reference_cache = _ReferenceCache(self.config.timeout_s, self.config.load_judge(),
                                                    judge_name=self.config.judge)
            return
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent_socket, child_socket = socket.socketpair()
        # The child sees the parent's import path, as multiprocessing's spawn would give it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with tempfile.TemporaryFile() as progress_file:
            progress_file.truncate(_PROGRESS.size)
            progress = mmap.mmap(progress_file.fileno(), _PROGRESS.size)
            _PROGRESS.pack_into(progress, 0, -1, -1)
            fds = [child_socket.fileno(), progress_file.fileno()]
            process = subprocess.Popen(
                [sys.executable, "-c", f"from transforms.verifier import _subprocess_main; _subprocess_main({fds[0]}, {fds[1]})"],
                pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        child_socket.close()
        conn = Connection(parent_socket.detach())
        conn.send_bytes(pickle.dumps(self.config))
        return _Worker(process, conn, progress)

    @staticmethod
    def _stop(worker: _Worker, grace_s: float):
        try:
            worker.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.conn.close()
        if worker.progress is not None:
            worker.progress.close()

    def close(self):
        """Stops every worker; waits for a verify() in progress on another thread to finish first.
        A later verify() starts fresh workers."""
        with self._lock:
            self._shutdown(grace_s=5)

    def _shutdown(self, grace_s: float):
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass  # already gone: nothing to tell it
        for worker in self._workers:
            self._stop(worker, grace_s=grace_s)
        self._workers = []

    def verify(self, references: list[str | None], responses: list[str], sources: list[str | None] | None = None,
               questions: list[str | None] | None = None) -> Verdicts:
        """Judges aligned lists (each row by the verifier its data_source maps to in config.sources, with
        its question in view when `questions` is given); returns Verdicts: four lists, score (1.0, 0.0 or
        None), status, extracted answer, rule."""
        verdicts: list[Verdict | None] = [None] * len(responses)
        by_reference: dict[tuple[str, str], list[int]] = {}
        mapping = self.config.source_verifiers()
        for i, reference in enumerate(references):
            reference = reference.strip() if isinstance(reference, str) else None
            if not reference:
                verdicts[i] = Verdict(None, VerifierStatus.NO_REFERENCE, None, None)
                continue
            verifier = mapping.get(sources[i], "math") if sources is not None and mapping else "math"
            by_reference.setdefault((verifier, reference), []).append(i)
        if questions is not None:  # one object per distinct question: a task message pickles each once
            distinct: dict = {}
            questions = [distinct.setdefault(q, q) for q in questions]
        if self.num_workers == 0:
            for (verifier, reference), rows in by_reference.items():
                results = judge_task(self._reference_cache, verifier, reference, [responses[i] for i in rows],
                                     [questions[i] for i in rows] if questions is not None else None)
                for i, result in zip(rows, results):
                    verdicts[i] = result
        elif by_reference:
            with self._lock:
                try:
                    self._run_tasks(by_reference, responses, questions, verdicts)
                except BaseException:
                    # Workers may still hold this call's tasks or unread answers; the next call must not
                    # read them as its own, so it starts from fresh workers.
                    self._shutdown(grace_s=0)
                    raise
        return Verdicts(*(list(column) for column in zip(*verdicts))) if verdicts else Verdicts([], [], [], [])

    def _run_tasks(self, by_reference, responses, questions, verdicts):
        if not self._workers:
            self.start()
        queue: deque[_Task] = deque()
        size = self.config.task_size
        for (verifier, reference), rows in by_reference.items():
            for start in range(0, len(rows), size):
                chunk = rows[start:start + size]
                queue.append(self._new_task(verifier, reference, chunk, [responses[i] for i in chunk],
                                            [questions[i] for i in chunk] if questions is not None else None))
        remaining = sum(len(t.rows) for t in queue)
        startup_failures = 0
        while remaining:
            for worker in self._workers:
                if worker.ready and not worker.inflight and worker.process.poll() is not None:
                    self._replace(worker, queue, verdicts, VerifierStatus.ERROR)  # died idle: nothing to blame
                    continue
                while worker.ready and len(worker.inflight) < 2 and queue:
                    task = queue.popleft()
                    if not worker.inflight:
                        worker.last_progress = time.monotonic()
                    worker.inflight.append(task)
                    try:
                        worker.conn.send((task.task_id, task.verifier, task.reference, task.responses, task.questions))
                    except (BrokenPipeError, OSError):  # it died while idle or queued: replace it, keep its work
                        worker.inflight.pop()
                        queue.appendleft(task)
                        remaining -= self._replace(worker, queue, verdicts, VerifierStatus.ERROR)
                        break
            now = time.monotonic()
            deadlines = [w.last_progress + (self.config.hard_timeout_s if w.ready else _STARTUP_TIMEOUT_S)
                         for w in self._workers if w.inflight or not w.ready]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else None
            for conn in wait_connections([w.conn for w in self._workers], timeout=wait_s):
                worker = next(w for w in self._workers if w.conn is conn)
                try:
                    while conn.poll():
                        message = conn.recv()
                        worker.last_progress = time.monotonic()
                        if message[0] == "ready":
                            worker.ready = True
                            startup_failures = 0
                        elif message[0] == "fatal":
                            raise RuntimeError(f"verifier worker failed to start:\n{message[1]}")
                        else:
                            _, task_id, answers = message
                            task = worker.inflight[0]
                            for position, *verdict in answers:
                                if task.task_id != task_id or task.answered != position:
                                    raise RuntimeError(f"verifier worker answered out of order: task {task_id} row "
                                                       f"{position}, expected task {task.task_id} row {task.answered}")
                                i = task.rows[position]
                                verdicts[i] = Verdict(*verdict)
                                task.answered += 1
                                remaining -= 1
                            if task.answered == len(task.rows):
                                worker.inflight.popleft()
                except (EOFError, OSError):
                    if not worker.ready:
                        startup_failures += 1
                        if startup_failures > 3:
                            raise RuntimeError("verifier workers keep dying during start-up") from None
                    remaining -= self._replace(worker, queue, verdicts, VerifierStatus.ERROR)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.ready and worker.inflight and now - worker.last_progress > self.config.hard_timeout_s:
                    remaining -= self._replace(worker, queue, verdicts, VerifierStatus.TIMEOUT)
                elif not worker.ready and now - worker.last_progress > _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def _new_task(self, verifier, reference, rows, task_responses, task_questions=None) -> _Task:
        self._next_task_id += 1
        return _Task(self._next_task_id, verifier, reference, rows, task_responses, task_questions)

    def _replace(self, worker: _Worker, queue: deque, verdicts: list, stuck_status: str) -> int:
        """Kills `worker`, marks the row it was on with `stuck_status`, re-queues the rest of its tasks.

        Returns how many rows were settled (0 or 1)."""
        settled = 0
        if worker.inflight:
            head = worker.inflight[0]
            stuck = head.answered
            if worker.progress is not None:
                task_id, position = _PROGRESS.unpack_from(worker.progress, 0)
                if task_id == head.task_id and head.answered <= position < len(head.rows):
                    stuck = position  # rows before it were judged, their results not yet sent: re-queued
            verdicts[head.rows[stuck]] = Verdict(None, stuck_status, None, None)
            settled = 1
            log.warning("verifier worker %s on a response (row %d); replacing the worker",
                        "timed out" if stuck_status == VerifierStatus.TIMEOUT else "died", head.rows[stuck])
            unanswered = [k for k in range(head.answered, len(head.rows)) if k != stuck]
            for task in reversed(list(worker.inflight)[1:]):
                if task.answered < len(task.rows):
                    queue.appendleft(self._new_task(task.verifier, task.reference, task.rows[task.answered:],
                                                    task.responses[task.answered:],
                                                    task.questions and task.questions[task.answered:]))
            if unanswered:
                queue.appendleft(self._new_task(head.verifier, head.reference, [head.rows[k] for k in unanswered],
                                                [head.responses[k] for k in unanswered],
                                                head.questions and [head.questions[k] for k in unanswered]))
        worker.process.kill()
        self._stop(worker, grace_s=0)
        self._workers[self._workers.index(worker)] = self._spawn()
        self.restarts += 1
        return settled


def question_texts(prompts: list) -> list[str | None]:
    """The question of each prompt: its text, or a chat's last user message (its last characters)."""
    questions = []
    for prompt in prompts:
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            prompt = users[-1] if users else None
        questions.append(prompt[-QUESTION_MAX_CHARS:] if isinstance(prompt, str) else None)
    return questions


def verify_table(table: pa.Table, pool: VerifierPool) -> pa.Table:
    """Appends verifier_score, verifier_status, extracted_answer and verifier_rule to a table of rollouts."""
    references = table.column(REFERENCE).to_pylist()
    responses = table.column(RESPONSE).to_pylist()
    sources = table.column(DATA_SOURCE).to_pylist() if DATA_SOURCE in table.column_names else None
    questions = question_texts(table.column(PROMPT).to_pylist()) if PROMPT in table.column_names else None
    scores, statuses, extracted, rules = pool.verify(references, responses, sources, questions)
    columns = [
        pa.array(np.array([np.nan if s is None else s for s in scores], dtype=np.float32),
                 mask=np.array([s is None for s in scores], dtype=bool)),
        pa.array(statuses, pa.string()),
        pa.array(extracted, pa.string()),
        pa.array(rules, pa.string()),
    ]
    for f, column in zip(VERIFIER_FIELDS, columns):
        table = table.append_column(f, column)
    return table
