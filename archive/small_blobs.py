"""The small blobs of a download, read in groups (:meth:`~archive.interface.ArchiveInterface.read_keys`).

A download of many small files from remote storage used to cost a read of its own for each
blob (over SFTP three round trips each). Here the small blobs (up to
:data:`archive.cache.REHASH_BELOW`) that must come from the archive are read in groups, each
group by one job: every content is checked against its blob's id and size, kept in the cache
(unless the pull skips it), and written from memory to each file that has it (in the modes
that copy), so a small file's bytes are read over the network once and never read back.

This is only a faster way for what the per-file path does: a blob the group did not deliver
whole and right (missing, refused, corrupt, a connection lost) is left to that path, which reads
it alone, with its retries, and reports what is wrong as before. Nothing is placed from a
content that was not verified.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import layout
from .cache import REHASH_BELOW, BlobCache
from .errors import DestinationError
from .placing import COPYING_MODES, Placement, Route, SmallWriter, Source
from .hashing import BlobId
from .transfer import check_interrupted, run_jobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface
    from .transfer import Progress

#: Blobs per group: enough to share the round trips, few enough that every thread gets groups.
GROUP_BLOBS = 64
MIN_GROUP_BLOBS = 8


def fetch_small_blobs(arc: "ArchiveInterface", cache: BlobCache, placements: list[Placement],
                      sources: dict[str, Source], wanted: set[str], link: str, workers: int, bar: "Progress",
                      write_small: SmallWriter) -> list[Placement]:
    """Read the small blobs of ``placements`` named in ``wanted`` (hex digests) in groups, on
    ``workers`` threads, and place the files they give (each written by ``write_small``);
    return the placements left to place."""
    by_blob: dict[str, Wanted] = {}
    left: list[Placement] = []
    for placement in placements:
        entry = placement.entry
        key = entry.blob.hexdigest
        if placement.mode_only or entry.size > REHASH_BELOW or key not in wanted:
            left.append(placement)
        elif key in by_blob:
            by_blob[key].targets.append(placement)
        else:
            by_blob[key] = Wanted(entry.blob, entry.size, sources[key].route is Route.CACHE, [placement])
    if not by_blob:
        return placements
    fetch = _Fetch(arc, cache, link, bar, write_small)
    for leftover in _run_groups(fetch, list(by_blob.values()), workers):
        left.extend(p for w in leftover for p in w.targets)
    return left


def cache_small_blobs(arc: "ArchiveInterface", cache: BlobCache, blobs: list[tuple[BlobId, int]], workers: int,
                      bar: "Progress") -> list[tuple[BlobId, int]]:
    """Read the small ones of ``blobs`` (missing from the cache) in groups into the cache; return
    those left to fetch one by one (large ones, and any a group did not deliver whole and right)."""
    small = [Wanted(blob, size, True, []) for blob, size in blobs if size <= REHASH_BELOW]
    left = [(blob, size) for blob, size in blobs if size > REHASH_BELOW]
    fetch = _Fetch(arc, cache, "copy", bar, lambda placement: True)
    for leftover in _run_groups(fetch, small, workers):
        left.extend((w.blob, w.size) for w in leftover)
    return left


@dataclass(frozen=True)
class Wanted:
    """A small blob to read, whether it is kept in the cache, and the files that have it."""

    blob: BlobId
    size: int
    cached: bool
    targets: list[Placement]


def _run_groups(fetch: "_Fetch", wanted: list[Wanted], workers: int) -> list[list[Wanted]]:
    """Run ``fetch`` on groups of ``wanted`` on ``workers`` threads; what each group left."""
    size = max(MIN_GROUP_BLOBS, min(GROUP_BLOBS, math.ceil(len(wanted) / max(workers, 1))))
    return run_jobs([functools.partial(fetch, wanted[i:i + size]) for i in range(0, len(wanted), size)], workers)


@dataclass(frozen=True)
class _Fetch:
    """Reads one group of blobs and places what each gives (a job of :func:`_run_groups`)."""

    arc: "ArchiveInterface"
    cache: BlobCache
    link: str
    bar: "Progress"
    write_small: SmallWriter

    def __call__(self, group: list[Wanted]) -> list[Wanted]:
        """Read ``group``; keep and place each blob that came whole and right. Returns what is
        left: blobs not delivered, and files the cache must give in this mode (links, reflinks)."""
        check_interrupted()
        left: list[Wanted] = []
        requests = [(layout.blob_key(w.blob), w.size) for w in group]
        for wanted, (_, result) in zip(group, self.arc.read_keys(requests)):
            if not (isinstance(result, bytes) and len(result) == wanted.size
                    and hashlib.sha256(result).hexdigest() == wanted.blob.hexdigest):
                left.append(wanted)  # read alone by the per-file path, which says what is wrong
                continue
            if wanted.cached:
                self.cache.put_verified(wanted.blob, result)
            if wanted.cached and self.link not in COPYING_MODES:
                left.append(wanted)  # its files link to (or reflink) the cache file: placed by the per-file path
                continue
            for placement in wanted.targets:
                _write(placement, result, self.write_small)
            for _ in wanted.targets or [wanted]:  # a blob only fetched into the cache counts as one file
                self.bar.advance(wanted.size)
                self.bar.file_done()
        return left


def _write(placement: Placement, data: bytes, write_small: SmallWriter) -> None:
    """Write one file from a verified blob's bytes (as :func:`archive.placing.place` does)."""
    try:
        write_small(placement, data)
    except OSError as exc:
        raise DestinationError(f"cannot write {placement.target!r}: {exc.strerror or exc}") from exc
