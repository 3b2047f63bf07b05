"""Storing the new small files of a publish from several processes at once.

Publishing many small files to a local archive is a loop of system calls and one sha256 per
file: read the source, hash it, write the blob's temporary file. One interpreter runs it on one
core however many threads it has (the interpreter lock; :meth:`ArchiveInterface.write_workers`
says 1 for these files). The bare loop over 100,000 files of 1 KiB took 5.2 s in one process
and 2.7 s split over two (journaled ext4, two cores), so a publish splits it as a pull splits
its placing (:mod:`archive.forking`, :mod:`archive.place_workers`).

How: where the archive offers :meth:`~archive.interface.ArchiveInterface.forked_writes` (a
local archive inside its batch) and the files are many, the publishing process forks. Each
child takes a contiguous slice of the new files: it reads each whole and checks it is still the
file scanned (:func:`~archive.storing.read_whole`), hashes it, finds its media type, and writes
its blob through the archive's forked writes (content it met before is written once). Before
it reports, its blobs are whole, durable and in place (:meth:`ForkedWrites.finish`). It reports,
per file it stored, the file's index, its digest and its media type; a file it could not read
is left out, and the parent stores it through the in-process path, which says what is wrong.
The parent stores the first slice itself, as before. A child that does not report whole
(failed, interrupted, killed) leaves its whole slice to the parent: writing a blob again is
harmless. A child whose parent is gone stops, removing the temporary files it has not moved.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import TYPE_CHECKING, Callable, Sequence

from . import layout
from .forking import parent_gone, processes_for, run_split
from .hashing import BlobId
from .media import detect_media_type
from .records import FileEntry
from .scan import SourceFile
from .storing import read_whole

if TYPE_CHECKING:
    from .interface import ArchiveInterface, ForkedWrites

logger = logging.getLogger(__name__)
#: Files up to this size are stored by worker processes (read whole, written from memory).
FORKED_FILE = 256 * 1024
_RECORD = struct.Struct("<q32sH")  # index, sha256, length of the media type that follows

Job = Callable[[SourceFile], FileEntry]
CheckUnchanged = Callable[[SourceFile, int, int], None]


def processes_to_store(sources: Sequence[SourceFile], jobs: int | None) -> int:
    """How many processes should store ``sources`` (the parent included): 1 unless they are all
    small and many (whether the archive can be written from a forked child, :func:`store_split`
    asks). ``jobs``: the user's ``--jobs``, a cap (1: one process)."""
    if any(source.size > FORKED_FILE for source in sources):
        return 1
    processes = processes_for(len(sources))
    if jobs is not None:
        processes = min(processes, jobs)
    return processes


def store_split(arc: "ArchiveInterface", sources: Sequence[SourceFile], processes: int, job: Job,
                check: CheckUnchanged, on_stored: Callable[[SourceFile, FileEntry], None]) -> list[FileEntry]:
    """Store ``sources`` over ``processes`` processes; their entries, in order.

    ``job(source)`` stores one file in this process (the parent's slice, and what a child left);
    ``on_stored`` hears of each file a child stored (counted, shown), in this process.
    ``check(source, fd, size)`` is what the in-process path checks of a file read.
    """
    writes = arc.forked_writes()
    if writes is None or processes < 2:
        return [job(source) for source in sources]

    def in_child(start: int, end: int) -> bytes:
        return _store_slice(sources, start, end, writes, check)

    entries: list[FileEntry | None] = [None] * len(sources)
    mine, reports = run_split(len(sources), processes, in_child,
                              lambda start, end: [job(source) for source in sources[start:end]],
                              f"storing {len(sources)} small files")
    entries[:len(mine)] = mine
    for start, end, report in reports:
        for index, entry in _entries_in(report, sources):
            entries[index] = entry
            on_stored(sources[index], entry)
        for index in range(start, end):
            if entries[index] is None:  # not stored by the child: here, with the in-process path's errors
                entries[index] = job(sources[index])
    return entries  # type: ignore[return-value]  # every index filled above


def _store_slice(sources: Sequence[SourceFile], start: int, end: int, writes: "ForkedWrites",
                 check: CheckUnchanged) -> bytes:  # pragma: no cover - runs in a child
    """Store ``sources[start:end]`` in a child; the report of the files stored."""
    report = bytearray()
    written: set[bytes] = set()
    try:
        for index in range(start, end):
            if parent_gone():
                raise SystemExit(3)  # the publish is gone: store nothing more (and remove what is not in place)
            source = sources[index]
            try:
                data = read_whole(source, check)
            except Exception:  # left to the parent, which says what is wrong
                continue
            digest = hashlib.sha256(data).digest()
            media_type = detect_media_type(data, source.path).encode()
            if digest not in written:
                written.add(digest)
                writes.write(layout.blob_key(BlobId.of_digest(digest.hex())), data)
            report += _RECORD.pack(index, digest, len(media_type)) + media_type
        writes.finish()
    except BaseException:
        writes.discard()
        raise
    return bytes(report)


def _entries_in(report: bytes | None, sources: Sequence[SourceFile]) -> list[tuple[int, FileEntry]]:
    """The entries a child's report gives, by index (none without a report)."""
    if report is None:
        return []
    found = []
    at = 0
    while at < len(report):
        index, digest, length = _RECORD.unpack_from(report, at)
        at += _RECORD.size
        media_type = report[at:at + length].decode()
        at += length
        found.append((index, FileEntry(BlobId.of_digest(digest.hex()), sources[index].size, media_type=media_type)))
    return found
