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

Safety (the forking, reporting and stopping are :mod:`archive.forking`'s): a child uses no
thread, no lock and no connection of the parent (only local system calls: no stat cache, no
cache bookkeeping, no network). It stops when its parent is gone (checked per file: a SIGKILLed
pull leaves no worker placing files). On an interrupt or error in the parent, every child is
sent SIGTERM (which the CLI's handler, inherited, turns into KeyboardInterrupt, so a named
temporary is removed; an unnamed file needs nothing) and reaped before the parent goes on.
"""

from __future__ import annotations

import array
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from . import layout
from .cache import REHASH_BELOW
from .forking import parent_gone, processes_for, run_split
from .placing import COPYING_MODES, Caching, Placement, Route, SmallWriter, open_blob_file, read_verified_fd, source_of
from .records import FileEntry

if TYPE_CHECKING:
    from .cache import BlobCache
    from .interface import ArchiveInterface
    from .transfer import Progress


OpenBlob = Callable[[FileEntry], "int | None"]
OnFiles = Callable[[int, int], None]


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
    def in_child(start: int, end: int) -> bytes:
        return array.array("q", place_slice(placements, start, end, open_blob, write_small, in_child=True)).tobytes()

    left, reports = run_split(len(placements), processes, in_child,
                              lambda start, end: place_slice(placements, start, end, open_blob, write_small, on_files),
                              f"placing {len(placements)} small files")
    for start, end, report in reports:
        left.extend(_left_by(report, placements, start, end, on_files))
    return [placements[index] for index in sorted(left)]


def place_slice(placements: Sequence[Placement], start: int, end: int, open_blob: OpenBlob,
                write_small: SmallWriter, on_files: OnFiles | None = None, in_child: bool = False) -> list[int]:
    """Place ``placements[start:end]`` from verified blobs; return the indexes not placed.

    ``in_child``: in a worker process, whose loop stops (exits) once the pull is gone.
    """
    left = []
    for index in range(start, end):
        if in_child and parent_gone():
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


def _left_by(report: bytes | None, placements: Sequence[Placement], start: int, end: int,
             on_files: OnFiles) -> list[int]:
    """The indexes of a child's slice left to the parent (all of them without a report), after
    telling ``on_files`` of those it placed."""
    if report is None:
        return list(range(start, end))
    left = array.array("q", report).tolist()
    skipped = set(left)
    placed = [placements[index].entry.size for index in range(start, end) if index not in skipped]
    on_files(sum(placed), len(placed))
    return left
