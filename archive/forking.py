"""Splitting a loop of small-file work over forked worker processes.

A loop of system calls and one sha256 per file, run by one interpreter, uses one core however
many threads run it (the interpreter lock). Forked processes use the others: a pull places its
small files this way (:mod:`archive.place_workers`), a publish stores its new small files this
way (:mod:`archive.store_workers`). This module is the part they share: how many processes,
forking them safely, collecting what each reports, and stopping them.

How: the work is a sequence of ``count`` items, known to every process (the children inherit it;
nothing is sent to them: a slice is two numbers). The parent does the first slice itself; each
child does one contiguous slice and reports bytes of its own making, then leaves with
``os._exit`` (no exit handlers, no flush of inherited buffers). A report counts only if it
arrives whole (its length first) and the child exits with 0; otherwise the caller treats the
slice as not done and does it in-process, which must be harmless to do twice.

Safety: forking happens only while no other thread runs (a thread holding a lock at the fork
would leave it held in the child). A child uses no lock or connection of the parent, only local
system calls, and stops when its parent is gone (its body checks :func:`parent_gone`). On an
interrupt or error in the parent, every child is sent SIGTERM (which the CLI's handler,
inherited, turns into KeyboardInterrupt in the child, so its own clean-up runs) and reaped
before the parent goes on; a child still running after :data:`STOP_GRACE` is killed.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import struct
import sys
import threading
import time
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

#: Fewest small files worth a worker process. A worker costs about 4.5 ms of CPU (fork, the
#: pages it copies on write, exit, reaping; measured at 500 to 3,000 files of 4 KiB on a
#: journaled ext4) and a small file about 50 us: at 500 files its cost is under a fifth of
#: the work it takes over, so 1,000 files already gain; fewer stay in one process.
MIN_FILES_PER_WORKER = 500
#: Most processes (the parent included): the per-file work is mostly the kernel's, in folders
#: the processes share; more than the cores only contend.
MAX_PROCESSES = 8
#: Seconds a child gets to stop on SIGTERM before it is killed.
STOP_GRACE = 2.0
_LENGTH = struct.Struct("<q")
_INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

T = TypeVar("T")
#: A child's work: ``(start, end)`` of its slice -> its report.
ChildBody = Callable[[int, int], bytes]
#: A slice and what its child reported (None: no whole report; the slice is not done).
Report = tuple[int, int, "bytes | None"]


def processes_for(files: int) -> int:
    """How many processes (the parent included) should share ``files`` small files: 1 where
    workers cannot start safely (no ``fork``, another thread running) or would not pay."""
    if not hasattr(os, "fork") or sys.platform == "darwin" or threading.active_count() > 1:
        return 1  # macOS: its system libraries are not safe in a forked child (multiprocessing stopped forking there)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PROCESSES, files // MIN_FILES_PER_WORKER))


_parent = {"pid": 0}


def parent_gone() -> bool:
    """In a child: whether the process that forked it has ended (its work is then pointless)."""
    return os.getppid() != _parent["pid"]


def run_split(count: int, processes: int, child_body: ChildBody, parent_body: Callable[[int, int], T],
              what: str) -> tuple[T, list[Report]]:
    """Do items ``0 .. count-1`` over ``processes`` processes: ``parent_body(0, end)`` here, and
    ``child_body(start, end)`` in a forked child per other slice; ``what`` names the work in the
    debug log ("placing 3000 small files" ... "in 2 processes").

    Returns the parent's result and each child's ``(start, end, report)``, the report None when
    the child did not report whole (failed, interrupted, killed, or could not be started).
    Every child is reaped before this returns or raises.
    """
    if threading.active_count() > 1:  # started since processes_for: forking now would not be safe
        processes = 1
    bounds = [count * part // processes for part in range(processes + 1)]
    if processes > 1:
        logger.debug("%s in %d processes", what, processes)
    children: list[_Child] = []
    reports: list[Report] = []
    try:
        gc.freeze()  # the children's collector would otherwise touch (copy) every object they share
        try:
            for part in range(1, processes):
                child = _start(child_body, bounds[part], bounds[part + 1])
                if child is None:
                    reports.append((bounds[part], bounds[part + 1], None))  # done by the caller
                else:
                    children.append(child)
        finally:
            gc.unfreeze()
        mine = parent_body(0, bounds[1])
        reports.extend((child.start, child.end, _collect(child)) for child in children)
    finally:
        _stop_all(children)
    return mine, reports


class _Child:
    """A worker process: its pid, the read end of its report, its slice."""

    def __init__(self, pid: int, report: int, start: int, end: int) -> None:
        self.pid, self.report, self.start, self.end = pid, report, start, end
        self.reaped = False


def _start(body: ChildBody, start: int, end: int) -> "_Child | None":
    """Fork a child doing ``body(start, end)``; None if no process could be started.

    The signals the CLI turns into KeyboardInterrupt are held back across the fork: raised in
    the child before its ``try``, one would unwind the parent's stack (and run its handlers) in
    the child; raised in the parent before the child is known, it would leave the child unreaped.
    """
    parent = os.getpid()
    read_end, write_end = os.pipe()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        try:
            pid = os.fork()
        except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): the parent does the work
            logger.debug("cannot start a worker process: %s", exc)
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            _child(body, start, end, parent, read_end, write_end, held)
        os.close(write_end)
        return _Child(pid, read_end, start, end)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _child(body: ChildBody, start: int, end: int, parent: int, read_end: int, write_end: int,
           held: "set[signal.Signals]") -> None:  # pragma: no cover
    """The body of a worker process: do its slice, report, and leave without unwinding."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # an interrupt now lands in this try
        _parent["pid"] = parent
        os.close(read_end)
        gc.disable()
        report = body(start, end)
        _write_all(write_end, _LENGTH.pack(len(report)) + report)
        status = 0
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) or broken: the parent does the slice itself
        pass
    finally:
        os._exit(status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _collect(child: _Child) -> bytes | None:
    """Wait for ``child``; its report, or None unless it reported whole and exited with 0."""
    chunks = []
    while chunk := os.read(child.report, 1 << 16):
        chunks.append(chunk)
    os.close(child.report)
    child.report = -1
    _, status = os.waitpid(child.pid, 0)
    child.reaped = True
    data = b"".join(chunks)
    whole = len(data) >= _LENGTH.size and _LENGTH.unpack_from(data)[0] == len(data) - _LENGTH.size
    if os.waitstatus_to_exitcode(status) != 0 or not whole:
        logger.debug("worker %d ended with status %d: its %d items are done here", child.pid, status,
                     child.end - child.start)
        return None
    return data[_LENGTH.size:]


def _stop_all(children: list[_Child]) -> None:
    """Stop and reap every child not reaped yet (SIGTERM, then SIGKILL after a grace period)."""
    for child in children:
        if child.report >= 0:
            os.close(child.report)
            child.report = -1
        if not child.reaped:
            _signal(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    interrupted: BaseException | None = None
    for child in children:
        while not child.reaped:
            try:
                _reap(child, deadline)
            except KeyboardInterrupt as exc:  # a second Ctrl-C: reap all the same (at most STOP_GRACE)
                interrupted = exc
    if interrupted is not None:
        raise interrupted


def _reap(child: _Child, deadline: float) -> None:
    """Reap ``child`` if it has ended; kill it once past ``deadline``; else wait a moment."""
    try:
        pid, _ = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:  # reaped already, by a wait an interrupt cut short before it was noted
        pid = child.pid
    if pid:
        child.reaped = True
    elif time.monotonic() > deadline:
        _signal(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
        child.reaped = True
    else:
        time.sleep(0.005)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
