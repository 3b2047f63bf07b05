"""How a publish stores new files: each read once, each content written once, on the threads
the archive finds worth it.

A publish of many small files spends its time per file, not per byte, so what each file costs
here is counted in system calls and interpreter work: a small file is read by one ``read`` of a
bare descriptor, content that appears several times in one publish (200,000 empty files are one
blob) is written once, and the archive says how many threads its writes of each size are worth
(:meth:`archive.interface.ArchiveInterface.write_workers`).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Callable, Mapping

from . import layout
from .errors import InvalidInputError, KeyNotFoundError
from .hashing import BlobId
from .scan import SourceFile
from .transfer import run_jobs, with_retries

if TYPE_CHECKING:
    from .interface import ArchiveInterface


def read_whole(src: SourceFile, check: Callable[[SourceFile, int, int], None]) -> bytes:
    """The content of a small file, read by one descriptor, then ``check(src, fd, size_read)``
    (that it is still the file scanned) before the descriptor is closed.

    For a file that has not changed this costs one ``read`` of its size (plus the ``fstat`` of
    the check): a buffered file object would add an ``ioctl``, a ``lseek``, a ``fstat`` and the
    ``read`` that finds the end, which for thousands of small files is most of their cost.
    """
    try:
        fd = os.open(src.location, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {src.path!r}: {exc.strerror}") from None
    try:
        data = os.read(fd, src.size + 1)  # + 1: a file that grew since the scan is caught
        while 0 < len(data) < src.size:  # a short read before the end (rare): read on
            more = os.read(fd, src.size + 1 - len(data))
            if not more:
                break
            data += more
        check(src, fd, len(data))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {src.path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return data


class WrittenOnce:
    """The blobs a publish has written or is writing: duplicate content is written once.

    A writer claims a blob before it writes it and gives the claim back if the write fails
    (so its retry, or another file, writes it). Another file with that content skips the
    write: its blob is stored by the claimer's job, which must succeed for the publish to.
    """

    def __init__(self) -> None:
        self._blobs: set[BlobId] = set()
        self._lock = threading.Lock()

    def claim(self, blob: BlobId) -> bool:
        """True if ``blob`` was not claimed before (the caller now writes it)."""
        with self._lock:
            if blob in self._blobs:
                return False
            self._blobs.add(blob)
            return True

    def give_back(self, blob: BlobId) -> None:
        with self._lock:
            self._blobs.discard(blob)


def by_workers(arc: "ArchiveInterface", sources: list[SourceFile],
                workers: int | None) -> list[tuple[int, list[SourceFile]]]:
    """``sources`` grouped by the threads worth running for them, most threads first."""
    if workers is not None:
        return [(workers, sources)]
    groups: dict[int, list[SourceFile]] = {}
    for source in sources:
        groups.setdefault(arc.write_workers(source.size), []).append(source)
    return sorted(groups.items(), key=lambda item: -item[0])


def blobs_not_stored(blobs: Mapping[BlobId, int], arc: "ArchiveInterface", workers: int) -> set[BlobId]:
    """Which of ``blobs`` (blob id -> size) the archive lacks, in as few requests as it can.

    One listing per blob folder (at most 256, in parallel) where that is fewer requests than
    one ``stat_key`` per blob, as for the thousands of small files of one publish: a re-push
    of 100,000 unchanged files costs 256 listings instead of 100,000 stats. A listed blob is
    taken as whole (every blob is written whole or not at all); a blob checked by ``stat_key``
    must also have its size, so a damaged one found that way is written again.
    """
    by_folder: dict[str, list[BlobId]] = {}
    for blob in blobs:
        by_folder.setdefault(layout.blob_key(blob).rsplit("/", 1)[0], []).append(blob)
    if not arc.listable or len(by_folder) * 2 > len(blobs):
        present = run_jobs([lambda b=b, n=n: with_retries(lambda: _has_blob(arc, b, n), f"checking {b.short}")
                            for b, n in blobs.items()], workers)
        return {blob for blob, there in zip(blobs, present) if not there}

    def missing_in(folder: str, wanted: list[BlobId]) -> list[BlobId]:
        listed = frozenset(with_retries(lambda: arc.list_keys(folder), f"listing {folder}"))
        return [blob for blob in wanted if blob.hexdigest not in listed]  # one folder's names held at a time

    missing = run_jobs([lambda f=f, w=w: missing_in(f, w) for f, w in by_folder.items()], workers)
    return {blob for blobs_of_folder in missing for blob in blobs_of_folder}


def _has_blob(arc: "ArchiveInterface", blob: BlobId, size: int) -> bool:
    try:
        return arc.stat_key(layout.blob_key(blob)).size == size
    except KeyNotFoundError:
        return False
