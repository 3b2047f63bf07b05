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

import hashlib
import math
from typing import TYPE_CHECKING, Callable

from . import layout
from .cache import REHASH_BELOW, BlobCache
from .errors import DestinationError
from .materialize import wanted_mode, write_bytes_atomically
from .placing import Placement, Route, Source
from .records import FileEntry
from .transfer import check_interrupted, run_jobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface
    from .transfer import Progress

#: Blobs per group: enough to share the round trips, few enough that every thread gets groups.
GROUP_BLOBS = 64
MIN_GROUP_BLOBS = 8
#: The modes in which a file is written from memory (``reflink`` must reflink from the cache).
_COPYING = frozenset({"auto", "copy"})


def fetch_small_blobs(arc: "ArchiveInterface", cache: BlobCache, placements: list[Placement],
                      sources: dict[str, Source], wanted: set[str], link: str, workers: int, bar: "Progress",
                      needs_mode: Callable[[Placement], bool]) -> list[Placement]:
    """Read the small blobs of ``placements`` named in ``wanted`` (hex digests) in groups, on
    ``workers`` threads, and place the files they give; return the placements left to place.

    ``needs_mode(placement)``: False where a new file gets its mode from its creation alone
    (:func:`archive.materialize.creation_gives_mode`), so no ``chmod`` is needed.
    """
    by_blob: dict[str, tuple[FileEntry, list[Placement]]] = {}
    left: list[Placement] = []
    for placement in placements:
        entry = placement.entry
        key = entry.blob.hexdigest
        if placement.mode_only or entry.size > REHASH_BELOW or key not in wanted:
            left.append(placement)
        else:
            by_blob.setdefault(key, (entry, []))[1].append(placement)
    if not by_blob:
        return placements
    blobs = list(by_blob.items())
    size = max(MIN_GROUP_BLOBS, min(GROUP_BLOBS, math.ceil(len(blobs) / max(workers, 1))))
    jobs = [lambda group=blobs[i:i + size]: _fetch_group(arc, cache, group, sources, link, bar, needs_mode)
            for i in range(0, len(blobs), size)]
    for leftover in run_jobs(jobs, workers):
        left.extend(leftover)
    return left


def _fetch_group(arc: "ArchiveInterface", cache: BlobCache, group: list[tuple[str, tuple[FileEntry, list[Placement]]]],
                 sources: dict[str, Source], link: str, bar: "Progress",
                 needs_mode: Callable[[Placement], bool]) -> list[Placement]:
    """Read one group of blobs; place the files of each that came whole and right. Returns the
    placements left (a blob not delivered, or a file the cache must give in this mode)."""
    check_interrupted()
    left: list[Placement] = []
    requests = [(layout.blob_key(entry.blob), entry.size) for _, (entry, _) in group]
    for (hexdigest, (entry, targets)), (_, result) in zip(group, arc.read_keys(requests)):
        if not (isinstance(result, bytes) and len(result) == entry.size
                and hashlib.sha256(result).hexdigest() == hexdigest):
            left.extend(targets)  # read alone by the per-file path, which says what is wrong
            continue
        cached = sources[hexdigest].route is Route.CACHE
        if cached:
            cache.put_verified(entry.blob, result)
        for placement in targets:
            if cached and link not in _COPYING:
                left.append(placement)  # a link to (or a reflink of) the cache file
                continue
            _write(placement, result, needs_mode(placement))
            bar.advance(entry.size)
            bar.file_done()
    return left


def _write(placement: Placement, data: bytes, set_mode: bool) -> None:
    """Write one file from a verified blob's bytes, atomically (as :func:`archive.placing.place` does)."""
    try:
        write_bytes_atomically(placement.target, data, wanted_mode(placement.entry.executable), set_mode=set_mode)
    except OSError as exc:
        raise DestinationError(f"cannot write {placement.target!r}: {exc.strerror or exc}") from exc
