"""Servers and cluster nodes that tests start as OS processes: free loopback ports, and a stop that
cannot leave one behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


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
