"""What every server fixture shares: waiting until a started process listens, and stopping it."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable


def wait_until_listening(process: subprocess.Popen, port: int, name: str, output: Callable[[], str],
                         seconds: float = 20) -> None:
    """Return once ``process`` accepts TCP connections on 127.0.0.1:``port``.

    If it exits first, or is not listening after ``seconds``, it is stopped and RuntimeError
    tells why, with what it printed (``output()``).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} failed: {output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{name} did not start listening within {seconds:g} s")


def stop_process(process: subprocess.Popen) -> None:
    """Stop exactly the process a fixture started: terminate, then kill after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
