"""Placing the small files of a pull from several processes at once.

A pull of many small files from a local archive (or the cache) is a loop of system calls and
one sha256 per file, run by one interpreter: one core. ``python -m bench.floor`` timed the bare
loop at 1.18x ``cp -r`` in one process and 0.61x in two, so the second core is the only way to
the issue's 1.5x. Threads do not help (the interpreter lock; measured in
:func:`archive.download._placing_workers`).

How: once the pull is planned (conflicts refused, folders made) and while no other thread runs,
the process forks. Each child inherits the plan and places one contiguous slice of it (nothing
is sent to it: its slice is two numbers); the parent places the first slice itself. Each file
is placed as the in-process path places a small blob: read whole, checked against its id and
size (:func:`~archive.placing.read_verified_fd`), and written by the pull's
:class:`~archive.placing.SmallWriter` (unnamed and linked whole, or straight at its name in a
folder built aside). A child sends back only the indexes of the files it did not place (a
blob missing, corrupt, anything else); the parent then places those through the full
in-process path, which fetches what is missing and raises the same error as a pull without
workers. A child that does not finish its report cleanly leaves its whole
slice to that path: placing a file again is harmless.

Safety: a child uses no thread, no lock and no connection of the parent (only local system
calls: no stat cache, no cache bookkeeping, no network), and leaves with ``os._exit`` (no exit
handlers, no flush of inherited buffers). It stops when its parent is gone (``getppid`` per
file: a SIGKILLed pull leaves no worker placing files). On an interrupt or error in the parent,
every child is sent SIGTERM (which the CLI's handler, inherited, turns into KeyboardInterrupt,
so a named temporary is removed; an unnamed file needs nothing) and reaped before the parent
goes on; a child still running after :data:`STOP_GRACE` is killed.
"""

from __future__ import annotations

import array
import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from . import layout
from .cache import REHASH_BELOW
from .placing import COPYING_MODES, Caching, Placement, Route, SmallWriter, open_blob_file, read_verified_fd, source_of
from .records import FileEntry

if TYPE_CHECKING:
    from .cache import BlobCache
    from .interface import ArchiveInterface
    from .transfer import Progress

logger = logging.getLogger(__name__)

#: Fewest small files worth a worker process. A worker costs about 4.5 ms of CPU (fork, the
#: pages it copies on write, exit, reaping; measured at 500 to 3,000 files of 4 KiB on a
#: journaled ext4) and a small file about 50 us: at 500 files its cost is under a fifth of
#: the work it takes over, so a pull of 1,000 files already gains; fewer stay in one process.
MIN_FILES_PER_WORKER = 500
#: Most processes (the parent included): the per-file work is mostly the kernel's, in folders
#: the processes share; more than the cores only contend.
MAX_PROCESSES = 8
#: Seconds a child gets to stop on SIGTERM before it is killed.
STOP_GRACE = 2.0

OpenBlob = Callable[[FileEntry], "int | None"]
OnFiles = Callable[[int, int], None]


def processes_for(files: int) -> int:
    """How many processes (the parent included) should place ``files`` small files: 1 where
    workers cannot start safely (no ``fork``, another thread running) or would not pay."""
    if not hasattr(os, "fork") or sys.platform == "darwin" or threading.active_count() > 1:
        return 1  # macOS: its system libraries are not safe in a forked child (multiprocessing stopped forking there)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PROCESSES, files // MIN_FILES_PER_WORKER))


def plan_split(arc: "ArchiveInterface", cache: "BlobCache", writes: list[Placement], link: str,
               caching: Caching, workers: int) -> "Split | None":
    """How worker processes (at most ``workers``, the pull's ``--jobs``) may place the small
    files of ``writes``, or None where they should not: too few
    files, a linking mode, or blobs neither on a local disk nor (the first one) in the cache.

    The route is asked of one blob: it depends on the archive and the mode, not on the blob. A
    blob the workers cannot place as asked is left to the in-process path, which asks again.
    """
    small = [p for p in writes if p.entry.size <= REHASH_BELOW]
    processes = min(workers, processes_for(len(small))) if link in COPYING_MODES else 1
    if processes < 2:
        return None
    sample = small[0].entry
    route = source_of(arc, cache, sample, link, caching).route
    if route is Route.LOCAL:
        def open_blob(entry: FileEntry) -> int | None:
            return arc.open_local(layout.blob_key(entry.blob))
    elif route is Route.CACHE and cache.has(sample.blob, sample.size):
        def open_blob(entry: FileEntry) -> int | None:
            return open_blob_file(cache.path_of(entry.blob))
    else:
        return None
    return Split(small, processes, open_blob)


@dataclass(frozen=True)
class Split:
    """The small files worker processes place, over how many processes, and where their blobs are."""

    small: list[Placement]
    processes: int
    open_blob: OpenBlob


def place_small(placements: list[Placement], split: Split, write_small: SmallWriter, bar: "Progress",
                ) -> list[Placement]:
    """Place ``split.small`` over worker processes, each file written by ``write_small``; return
    ``placements`` without those placed."""
    def on_files(nbytes: int, files: int) -> None:
        bar.advance(nbytes)
        for _ in range(files):
            bar.file_done()

    left = place_split(split.small, split.processes, split.open_blob, write_small, on_files)
    if len(split.small) == len(placements):  # the usual case: every file was a small one to write
        return left
    done = {id(p) for p in split.small}.difference(id(p) for p in left)
    return [p for p in placements if id(p) not in done]


def place_split(placements: Sequence[Placement], processes: int, open_blob: OpenBlob, write_small: SmallWriter,
                on_files: OnFiles) -> list[Placement]:
    """Place ``placements`` (small files, independent modes) over ``processes`` processes; return
    those left to the in-process path (not placed: missing or bad blobs, a failed worker).

    ``open_blob(entry)``: a descriptor reading the file that holds the entry's blob (a local
    archive's, or the cache's), None if there is none. ``on_files(nbytes, files)`` hears of the files placed, in the parent: each of
    its own as it is placed, a child's all at once when it has reported.
    """
    if threading.active_count() > 1:  # started since processes_for: forking now would not be safe
        processes = 1
    bounds = [len(placements) * part // processes for part in range(processes + 1)]
    children: list[_Child] = []
    if processes > 1:
        logger.debug("placing %d small files in %d processes", len(placements), processes)
    unstarted: list[int] = []
    try:
        gc.freeze()  # the children's collector would otherwise touch (copy) every object they share
        try:
            for part in range(1, processes):
                if not _start(children, placements, bounds[part], bounds[part + 1], open_blob, write_small):
                    unstarted.extend(range(bounds[part], bounds[part + 1]))  # placed by the in-process path
        finally:
            gc.unfreeze()
        left = place_slice(placements, 0, bounds[1], open_blob, write_small, on_files) + unstarted
        for child in children:
            left.extend(_collect(child, placements, on_files))
    finally:
        _stop_all(children)
    return [placements[index] for index in sorted(left)]


def place_slice(placements: Sequence[Placement], start: int, end: int, open_blob: OpenBlob,
                write_small: SmallWriter, on_files: OnFiles | None = None,
                parent: int | None = None) -> list[int]:
    """Place ``placements[start:end]`` from verified blobs; return the indexes not placed.

    ``parent``: in a child, its parent's pid; the loop stops (exits) once the parent is gone.
    """
    left = []
    for index in range(start, end):
        if parent is not None and os.getppid() != parent:
            os._exit(3)  # the pull is gone: place nothing more
        placement = placements[index]
        entry = placement.entry
        try:
            fd = open_blob(entry)
            if fd is None:
                raise FileNotFoundError(entry.blob.hexdigest)
            write_small(placement, read_verified_fd(fd, entry.blob, entry.size, "blob"))
        except Exception:  # the in-process path places it again, and says what is wrong
            left.append(index)
            continue
        if on_files is not None:
            on_files(entry.size, 1)
    return left


class _Child:
    """A worker process: its pid, the read end of its report, its slice."""

    def __init__(self, pid: int, report: int, start: int, end: int) -> None:
        self.pid, self.report, self.start, self.end = pid, report, start, end
        self.reaped = False


def _start(children: list[_Child], placements: Sequence[Placement], start: int, end: int,
           open_blob: OpenBlob, write_small: SmallWriter) -> bool:
    """Fork a child placing ``placements[start:end]`` and add it to ``children``; it reports the
    indexes it left, then ``-1``. False if no process could be started.

    The signals the CLI turns into KeyboardInterrupt are held back across the fork: raised in
    the child before its ``try``, one would unwind the parent's stack (and run its handlers) in
    the child; raised in the parent before the child is in ``children``, it would leave the
    child unreaped.
    """
    parent = os.getpid()
    read_end, write_end = os.pipe()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        try:
            pid = os.fork()
        except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): the parent does the work
            logger.debug("cannot start a place worker: %s", exc)
            os.close(read_end)
            os.close(write_end)
            return False
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            _child(placements, start, end, open_blob, write_small, parent, read_end, write_end, held)
        os.close(write_end)
        children.append(_Child(pid, read_end, start, end))
        return True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _child(placements: Sequence[Placement], start: int, end: int, open_blob: OpenBlob, write_small: SmallWriter,
           parent: int, read_end: int, write_end: int, held: "set[signal.Signals]") -> None:  # pragma: no cover
    """The body of a worker process: place its slice, report, and leave without unwinding."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # an interrupt now lands in this try
        os.close(read_end)
        gc.disable()
        left = place_slice(placements, start, end, open_blob, write_small, parent=parent)
        _write_report(write_end, array.array("q", [*left, -1]).tobytes())
        status = 0
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) or broken: the parent places the slice itself
        pass
    finally:
        os._exit(status)


def _write_report(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _collect(child: _Child, placements: Sequence[Placement], on_files: OnFiles) -> list[int]:
    """Wait for ``child``; the indexes of its slice left to the parent (all of it if it failed)."""
    chunks = []
    while chunk := os.read(child.report, 1 << 16):
        chunks.append(chunk)
    os.close(child.report)
    child.report = -1
    _, status = os.waitpid(child.pid, 0)
    child.reaped = True
    data = b"".join(chunks)
    report = array.array("q")
    report.frombytes(data[:len(data) // 8 * 8])
    if os.waitstatus_to_exitcode(status) != 0 or not report or report[-1] != -1:
        logger.debug("place worker %d ended with status %d: its %d files are placed here", child.pid, status,
                     child.end - child.start)
        return list(range(child.start, child.end))
    left = report[:-1].tolist()
    skipped = set(left)
    placed = [placements[index].entry.size for index in range(child.start, child.end) if index not in skipped]
    on_files(sum(placed), len(placed))
    return left


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
