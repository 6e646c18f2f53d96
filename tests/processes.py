"""Servers, cluster nodes and runs that tests start as OS processes: free loopback ports, a stop that
cannot leave one behind, and the environment of a run killed at a fault point."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.storage.faults import FAULT_COUNTS_ENV, FAULT_ENV


def with_fault(env: dict[str, str], fault: str | None, counts: Path | None = None) -> dict[str, str]:
    """`env` for a run that SIGKILLs its process group at `fault` (NAME:N, storage/faults.py), or, with
    None, for a clean run (an inherited fault removed). The run's processes count the fault's points
    together in the directory `counts` (Ray's workers take units in no fixed order)."""
    child = {k: v for k, v in env.items() if k not in (FAULT_ENV, FAULT_COUNTS_ENV)}
    if fault:
        if counts is None:
            raise ValueError("a fault needs a directory to count its points in")
        counts.mkdir(parents=True, exist_ok=True)
        child.update({FAULT_ENV: fault, FAULT_COUNTS_ENV: str(counts)})
    return child


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` now (all held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop(process: subprocess.Popen, grace_s: float = 20, group: bool = True) -> None:
    """SIGTERM (to its whole process group when it was started in a session of its own), then SIGKILL
    if it has not exited within `grace_s`."""
    if process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    send(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def dask_task_stream(client, since: int) -> list[tuple[str, str]]:
    """(task name prefix, worker) of every task the Dask scheduler saw finish since index `since`."""
    def collect(dask_scheduler, start):
        return [(str(t["key"]), t["worker"]) for t in dask_scheduler.get_task_stream(start_index=start)]
    return [(key.split("-")[0], worker) for key, worker in client.run_on_scheduler(collect, start=since)]


def dask_stream_index(client) -> int:
    """Where the scheduler's task stream is now (the first call makes it keep one from then on)."""
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.get_task_stream_index())


def dask_pipeline(address: str, input_path, output, *extra) -> list[str]:
    """The command line of a run on the Dask scheduler at `address`."""
    return [sys.executable, "run_pipeline.py", "--engine", "dask", "--dask-scheduler", address, "--input",
            str(input_path), "--output", str(output), "--progress", "off", *extra]
