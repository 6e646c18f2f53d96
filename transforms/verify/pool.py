"""The verifier pool: worker processes judging rows with hard time limits, for every verifier of the registry.

It knows no verifier: each (verifier name, reference) task is judged by make_verifier's verifier for that
name. Verifiers built on math-verify enforce their own timeouts with signal.alarm, which works only in a
process's main thread, and a pathological answer can still hang them. So every call runs in the main
thread of a worker process, and the parent kills and replaces any worker that has made no progress for
`hard_timeout_s`: the stuck row gets status "timeout", the rest of its work is re-queued.

Workers are plain subprocesses (a fresh interpreter talking over a socket pair), not multiprocessing
children: Dask workers started the default way are daemonic processes, which may not start
multiprocessing children, and the same pool must run under every engine.

Speed: about 1-4 ms per response per worker on real GSM8K/MATH outputs; each distinct reference is
prepared once per worker (LRU cache), not once per response.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
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

from schemas.rollouts import VerifierStatus
from transforms.verify.registry import DEFAULT_VERIFIER, Verdict, Verifier, VerifierSettings, make_verifier

log = logging.getLogger(__name__)

_REFERENCE_CACHE_SIZE = 4096
_STARTUP_TIMEOUT_S = 180.0


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup cpusets), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _ReferenceCache:
    """The verifiers of one process, by name (make_verifier's), and their prepared references per (verifier,
    reference), least recently used evicted; failures cached too."""

    def __init__(self, config: VerifierSettings, size: int = _REFERENCE_CACHE_SIZE):
        self.config = config
        self.timeout_s = config.timeout_s
        self.size = size
        self._verifiers: dict[str, Verifier] = {}
        self._prepared: OrderedDict[tuple[str, str], tuple[object, str | None]] = OrderedDict()

    def verifier(self, name: str) -> Verifier:
        if name not in self._verifiers:
            self._verifiers[name] = make_verifier(name, self.config)
        return self._verifiers[name]

    def get(self, verifier: str, reference: str) -> tuple[object, str | None]:
        """(prepared gold, None) or (None, failure status)."""
        key = (verifier, reference)
        hit = self._prepared.get(key)
        if hit is not None:
            self._prepared.move_to_end(key)
            return hit
        prepare, _ = self.verifier(verifier)
        prepared = prepare(reference, self.timeout_s)  # None where it cannot be prepared, an exception included
        entry = (prepared, None if prepared is not None else VerifierStatus.BAD_REFERENCE)
        self._prepared[key] = entry
        if len(self._prepared) > self.size:
            self._prepared.popitem(last=False)
        return entry


def judge_task(cache: _ReferenceCache, verifier: str, reference: str, responses: list[str],
               questions: list[str | None] | None = None):
    """Yields one Verdict per response of a task sharing `verifier` and `reference` (questions aligned
    with responses, or None)."""
    gold, failure = cache.get(verifier, reference)
    _, judge = cache.verifier(verifier)
    for k, response in enumerate(responses):
        if failure is not None:
            yield Verdict(None, failure, None, None)
            continue
        yield judge(gold, response, cache.timeout_s, questions[k] if questions else None)


def _start_cache(config: VerifierSettings) -> _ReferenceCache:
    """A process's verifiers, the default one built before any row: a judge that cannot be imported fails
    here, and what its factory loads once (math-verify's grammar) is not timed against a row."""
    cache = _ReferenceCache(config)
    cache.verifier(DEFAULT_VERIFIER)
    return cache


# Results go back in messages of several rows (one every RESULT_FLUSH_S at most, and at a task's end):
# one message per row cost the parent about 6% of a 2-core host. Which row a worker is on is written to
# a 16-byte shared file before each row, so a hang or a crash is still blamed on exactly that row.
RESULT_FLUSH_S = 0.02
_PROGRESS = struct.Struct("<qq")  # (task id, position in the task)


def _subprocess_main(fd: int, progress_fd: int):
    """Entry point of a worker subprocess: its socket is file descriptor `fd`, its progress file
    `progress_fd`; the config comes first."""
    os.set_blocking(fd, True)
    conn = Connection(fd)
    progress = mmap.mmap(progress_fd, _PROGRESS.size)
    _worker_main(conn, pickle.loads(conn.recv_bytes()), progress)


def _worker_main(conn, config: VerifierSettings, progress=None):
    """Worker process loop: receive (task_id, verifier, reference, [response]) and answer in order."""
    try:
        cache = _start_cache(config)
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
    """Worker processes running the verifiers; use as a context manager or call start()/close() (verify()
    starts them itself if start() was not called: a caller that may need none defers their start-up).

    verify(references, responses) blocks until every row has a result. Each worker holds at most two
    tasks (one running, one queued) so a killed worker loses little and load stays balanced. verify() may
    be called from several threads (engines share one pool per worker process); calls run one at a time,
    each using every worker. `num_workers` is the resolved worker count (see VerifierConfig).
    """

    def __init__(self, config: VerifierSettings, num_workers: int | None = None):
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
            self._reference_cache = _start_cache(self.config)
            return
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent_socket, child_socket = socket.socketpair()
        # Blocking, whatever socket.setdefaulttimeout says: a default timeout (Beam's GCP credentials code sets
        # 60 s) makes new sockets non-blocking, and Connection's raw reads would then fail with EAGAIN.
        parent_socket.setblocking(True)
        child_socket.setblocking(True)
        # The child sees the parent's import path, as multiprocessing's spawn would give it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with tempfile.TemporaryFile() as progress_file:
            progress_file.truncate(_PROGRESS.size)
            progress = mmap.mmap(progress_file.fileno(), _PROGRESS.size)
            _PROGRESS.pack_into(progress, 0, -1, -1)
            fds = [child_socket.fileno(), progress_file.fileno()]
            process = subprocess.Popen(
                [sys.executable, "-c", f"from transforms.verify.pool import _subprocess_main; _subprocess_main({fds[0]}, {fds[1]})"],
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
            verifier = DEFAULT_VERIFIER if sources is None or not mapping else mapping.get(sources[i], DEFAULT_VERIFIER)
            by_reference.setdefault((verifier, reference), []).append(i)
        if questions is not None:  # one object per distinct question: a task message pickles each once
            distinct: dict = {}
            questions = [distinct.setdefault(q, q) for q in questions]
        if self.num_workers == 0:
            with self._lock:  # start() not called: in-process verifiers load at first use, once
                if self._reference_cache is None:
                    self.start()
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
