"""Placing one file of a download: where its bytes come from, and how they get to its target.

A file's bytes come from one of three places (:class:`Route`): the archive's own blob file when
the archive is on a local disk, the user's cache (filled from the archive first), or the archive
itself, streamed straight into the destination. Whatever the route, every byte placed comes
from a blob checked against its id and size, and the target appears whole or not at all
(:mod:`archive.materialize`).

A small blob (up to :data:`archive.cache.REHASH_BELOW`) is read whole, hashed and written from
memory: hashing 64 KiB costs about what asking the stat cache whether the blob was verified
before costs, so a small blob is never looked up, never remembered, and a first pull costs
what a second one does. A larger blob is copied by the kernel when the stat cache knows it
verified and unchanged, and hashed as it is copied otherwise.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from . import layout
from .cache import REHASH_BELOW, BlobCache
from .errors import DestinationError, IntegrityError, KeyNotFoundError
from .hashing import BlobId, iter_chunks, verified_chunks
from .materialize import INDEPENDENT_MODES, place_file, wanted_mode, write_bytes_atomically, write_file_atomically
from .staging import write_bytes_in_place
from .records import FileEntry
from .statcache import identity
from .transfer import reporting, with_retries

if TYPE_CHECKING:
    from .interface import ArchiveInterface

#: From this size up, a blob a pull into a folder does not find in the cache is written straight
#: into the folder, once, and not also kept in the cache (unless the pull asks for
#: :attr:`Caching.ALL`): a second copy of large files doubles the disk a data set takes and the
#: bytes each pull writes, for a gain (no download for a later pull into another folder) that
#: small files, costly per byte to fetch again, give far more of.
LARGE_BLOB = 1 << 20
#: The modes in which a small file is written from memory (``reflink`` must reflink or fail).
COPYING_MODES = frozenset({"auto", "copy"})
#: Opening a blob file: never through a link, never waiting for a FIFO swapped in.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Placement:
    """One file to write (or, with ``mode_only``, only to make executable or not)."""

    path: str
    entry: FileEntry
    target: str  # a string, not a Path: one is made per file (see destination.Folders.target_of)
    mode_only: bool = False


class Route(Enum):
    """Where a file's bytes come from."""

    LOCAL = "the archive's own blob file, on a local disk"
    CACHE = "the user's cache, filled from the archive first"
    STREAM = "the archive, streamed straight into the destination"


class Caching(Enum):
    """What a pull into a folder, in a mode that makes independent files, keeps in the cache
    from a remote archive (links always point into the cache, and a local archive's blobs are
    always copied straight from it)."""

    ALL = "every blob it fetches"
    SMALL = "blobs under LARGE_BLOB; a larger one the cache already holds is copied from it"
    NONE = "nothing: every file streams straight into the destination"

    @classmethod
    def of(cls, use_cache: bool, cache_large: bool = False) -> "Caching":
        """The caching of the public ``use_cache`` and ``cache_large`` arguments."""
        if not use_cache:
            return cls.NONE
        return cls.ALL if cache_large else cls.SMALL


@dataclass(frozen=True, slots=True)
class Source:
    """How one file is placed: its route, and for :attr:`Route.LOCAL` the archive's blob file
    (a string: a pull of 100,000 blobs keeps one per blob, and a Path is several times larger)."""

    route: Route
    blob_file: str | None = None


@dataclass(frozen=True)
class SmallWriter:
    """How one pull writes a small file from memory (a verified blob's bytes) at its target.

    ``mode_given``: the folders (release-relative, ``""`` for the top) where a new file gets its
    mode from its creation alone (:func:`archive.materialize.creation_gives_mode`): no ``chmod``
    there. ``in_place``: the destination is a staged folder (:mod:`archive.staging`) that no
    other process sees, so the file is written straight at its name; otherwise it is placed
    atomically (:func:`archive.materialize.write_bytes_atomically`).
    """

    mode_given: "frozenset[str] | set[str]" = frozenset()
    in_place: bool = False

    def __call__(self, placement: Placement, data: bytes) -> None:
        write = write_bytes_in_place if self.in_place else write_bytes_atomically
        write(placement.target, data, wanted_mode(placement.entry.executable),
              set_mode=placement.path.rpartition("/")[0] not in self.mode_given)


#: Every file placed atomically, each with its ``chmod``.
ATOMIC = SmallWriter()


def source_of(arc: "ArchiveInterface", cache: BlobCache, entry: FileEntry, link: str, caching: Caching) -> Source:
    """How to place a file. A link (hard or symbolic) must point into the cache, never into the
    archive, where an edit of a pulled file would corrupt the only copy; an independent file
    is copied from a local archive directly (caching it would only double the bytes written),
    and streamed from a remote one when ``caching`` does not keep its blob (see :class:`Caching`)."""
    if link not in INDEPENDENT_MODES:
        return Source(Route.CACHE)
    blob_file = arc.local_file(layout.blob_key(entry.blob))
    if blob_file is not None:  # os.fspath: a third-party backend written before it was a str may return a Path
        return Source(Route.LOCAL, os.fspath(blob_file))
    if caching is Caching.ALL or (caching is Caching.SMALL and (entry.size < LARGE_BLOB
                                                                or cache.has(entry.blob, entry.size))):
        return Source(Route.CACHE)
    return Source(Route.STREAM)


def place(arc: "ArchiveInterface", cache: BlobCache, placement: Placement, source: Source, link: str,
          on_bytes: Callable[[int], None] | None = None, *, write_small: SmallWriter = ATOMIC) -> None:
    """Place one file, atomically, from ``source``, with its executable bit; ``on_bytes`` hears
    of the bytes written. In a linking mode an executable is a read-only copy: the cache file a
    link would share is never made executable. A small file written from memory is written by
    ``write_small``."""
    entry, target = placement.entry, placement.target
    linked = link not in INDEPENDENT_MODES
    file_mode = wanted_mode(entry.executable) & (~0o222 if linked else 0o7777)
    try:
        if placement.mode_only:
            os.chmod(target, file_mode)
        elif source.route is Route.LOCAL:
            _place_from_local_archive(arc, cache, placement, source.blob_file, link, file_mode, on_bytes, write_small)
        elif source.route is Route.STREAM:
            with_retries(lambda: _stream_from_archive(arc, placement, file_mode, on_bytes),
                         f"download of {placement.path}")
        else:
            if link in COPYING_MODES and entry.size <= REHASH_BELOW:
                _place_small_from_cache(arc, cache, placement, write_small)
            else:
                source_file = cache.verified_path(arc, entry.blob, entry.size)
                place_file(source_file, Path(target), "copy" if linked and entry.executable else link, file_mode)
            if on_bytes is not None:
                on_bytes(entry.size)
    except OSError as exc:
        raise DestinationError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc


def read_verified(path: "str | Path", blob: BlobId, size: int, what: str) -> bytes:
    """The whole content of the small blob file ``path``, checked against ``blob`` and ``size``.

    Raises :class:`IntegrityError` if it is longer, shorter or other than recorded, and
    ``FileNotFoundError`` if it is missing. One ``read`` of ``size + 1`` bytes tells all three
    (no second read to see the end: the bytes kept are hashed, and a longer file shows itself
    by the extra byte).
    """
    return read_verified_fd(open_blob_file(path), blob, size, what)


def open_blob_file(path: "str | Path") -> int:
    """A descriptor reading the blob file ``path``: never through a link, never waiting on a FIFO."""
    return os.open(path, _READ_FLAGS)


def read_verified_fd(fd: int, blob: BlobId, size: int, what: str) -> bytes:
    """:func:`read_verified` of the file open as ``fd``, which this closes."""
    try:
        data = os.read(fd, size + 1)
        while len(data) < size:  # a short read (rare on a regular file): read on
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > size:
        raise IntegrityError(f"{what}: more than the recorded {size} bytes")
    if len(data) != size:
        raise IntegrityError(f"{what}: {len(data)} bytes, but the record says {size}")
    got = hashlib.sha256(data).hexdigest()
    if got != blob.hexdigest:
        raise IntegrityError(f"{what}: content hashes to {got[:12]}, expected {blob.short}")
    return data


def _place_small_from_cache(arc: "ArchiveInterface", cache: BlobCache, placement: Placement,
                            write_small: SmallWriter) -> None:
    """Copy a small cached blob from memory, hashed again on the way (cheaper than a lookup); a
    cache file found missing or corrupt is evicted and fetched again once, as
    :meth:`BlobCache.verified_path` does."""
    entry = placement.entry
    what = f"cached blob {entry.blob.short}"
    try:
        data = read_verified(cache.path_of(entry.blob), entry.blob, entry.size, what)
    except (IntegrityError, FileNotFoundError):
        data = read_verified(cache.verified_path(arc, entry.blob, entry.size), entry.blob, entry.size, what)
    write_small(placement, data)


def _verified_copy(arc: "ArchiveInterface", stream: BinaryIO, placement: Placement, file_mode: int,
                   on_bytes: Callable[[int], None] | None) -> None:
    """Write ``stream`` (a blob) to the placement's target, checked against its id and size as
    it goes: a corrupt blob raises :class:`IntegrityError` before the target appears."""
    entry = placement.entry
    chunks = verified_chunks(reporting(iter_chunks(stream), on_bytes), entry.blob, entry.size,
                             f"blob {entry.blob.short} in {arc.location}")
    write_file_atomically(Path(placement.target), chunks, file_mode)


def _stream_from_archive(arc: "ArchiveInterface", placement: Placement, file_mode: int,
                         on_bytes: Callable[[int], None] | None) -> None:
    try:
        with arc.open_key(layout.blob_key(placement.entry.blob)) as stream:
            _verified_copy(arc, stream, placement, file_mode, on_bytes)
    except KeyNotFoundError:
        raise IntegrityError(f"blob {placement.entry.blob.short} is missing from {arc.location}") from None


def _place_from_local_archive(arc: "ArchiveInterface", cache: BlobCache, placement: Placement, blob_file: str,
                              link: str, file_mode: int, on_bytes: Callable[[int], None] | None,
                              write_small: SmallWriter = ATOMIC) -> None:
    """Copy a blob file of a local archive to its target, verified.

    A small one (unless reflinks are asked for) is read, hashed and written from memory. A
    larger one hashed before and unchanged since (the stat cache knows its identity, ctime
    included) is copied by the kernel (or reflinked); any other is read once, hashed as it is
    written, and then remembered. Blob
    files are read-only and replaced only by a rename (a new inode), never written in place,
    so like the cache's own files they need no racily-clean margin.
    """
    entry = placement.entry
    small = link in COPYING_MODES and entry.size <= REHASH_BELOW
    try:
        if small:
            data = read_verified(blob_file, entry.blob, entry.size, f"blob {entry.blob.short} in {arc.location}")
        else:
            info = os.stat(blob_file)
    except FileNotFoundError:
        raise IntegrityError(f"blob {entry.blob.short} is missing from {arc.location}") from None
    if small:
        write_small(placement, data)
        if on_bytes is not None:
            on_bytes(entry.size)
        return
    if cache.stat_cache.lookup(blob_file, info) == entry.blob:
        place_file(Path(blob_file), Path(placement.target), link, file_mode)
        if on_bytes is not None:
            on_bytes(entry.size)
        return
    with open(blob_file, "rb") as stream:
        _verified_copy(arc, stream, placement, file_mode, on_bytes)
        unchanged = identity(os.fstat(stream.fileno())) == identity(info)
    if unchanged:
        cache.stat_cache.remember([(blob_file, info, entry.blob)], hashed_at_ns=None)
