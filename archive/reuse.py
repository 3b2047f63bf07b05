"""Re-pushing an unchanged folder: the record of the last publish of the very same files, reused.

A push of a folder nothing in which changed since it was last published needs no file read
and no entry encoded: its record lists what that publish's record lists. So a publish whose
files had all settled remembers, in the stat cache, a digest of its scan (every file's release
path, location, identity and mode) beside the release it made and where the ``files`` object
lies in that record's bytes. A later scan with the same digest found the same files with the
same identities, which by the stat cache's rule (:mod:`archive.statcache`: a settled file
whose size, mtime, ctime, inode and device did not change holds the same bytes) means the same
contents, names and modes, and so the same entries, media types included.

The reuse is taken only when the archive shows that record still visible: its pointer names it,
and its bytes hash to it. A visible release is never removed, every blob it names is whole and
durable, and gc never collects one (:mod:`archive.gc`), so the new release, which names exactly
those blobs, holds the same guarantee without a lease and without listing the blob folders
(256 listings and 100,000 names, a sixth of the re-push). A blob removed behind the archive's
back is the damage ``archive verify`` reports; the next publish that is not a reuse (any file
changed) lists the blob folders and writes it again. Anything else (no digest remembered,
another archive, a record gone or damaged) falls back to the ordinary publish: it costs only
time.

The release returned parses its files only when they are read (:class:`EncodedFiles`): its
count and total size are known from the scan without parsing 100,000 entries. The ordinary
publish also takes hints from the latest release (:class:`EarlierRelease`): the sizes of its
files, read from its record's text, and its entries, parsed only when needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
import os
import re
import struct
from itertools import chain
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from . import layout
from .errors import ArchiveError, IntegrityError, InvalidInputError, NotFoundError
from .hashing import BlobId
from .record_codec import MAX_RECORD_BYTES, record_around_files
from .records import FileEntry, Release, canonical_json, check_metadata, check_name, parse_record
from .scan import FileStat, SourceFile
from .statcache import Published, StatCache, is_settled
from .versions import parse_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
#: An entry's size in a record's canonical text (any other "size" field only adds a size to a hint).
_SIZE_IN_RECORD = re.compile(rb'"size":(\d+)')
_INFO_OF, _PATH_OF, _LOCATION_OF = (operator.attrgetter(name) for name in ("info", "path", "location"))


def scan_digest(sources: list[SourceFile]) -> str:
    """The sha256 of what a scan found: each file's release path, location, mode, size, device,
    inode, mtime and ctime (and owner), in order. Equal digests mean the same files with the
    same identities.

    Hashed as three runs, each fed in pieces of :data:`_DIGEST_FILES` files (a bounded buffer
    at a million files, and the same bytes as one piece): the numbers as signed 64-bit
    integers in native order, packed by one ``struct`` call per piece; then the paths, then the
    locations, each joined by NUL. A scan's :class:`FileStat` values are taken as they are;
    other stat values (given by :mod:`archive.builder`) are read by name, since an
    ``os.stat_result`` as a sequence holds whole seconds, not the nanoseconds of the identity."""
    infos = list(map(_INFO_OF, sources))
    if not set(map(type, infos)) <= {FileStat}:
        infos = list(map(_identity_of, infos))
    try:
        digest = hashlib.sha256(b"q")
        for piece in _pieces(infos):
            digest.update(struct.pack(f"={7 * len(piece)}q", *chain.from_iterable(piece)))
    except struct.error:  # a number over 63 bits (an inode on some file systems): as text then
        digest = hashlib.sha256(b"r" + repr([tuple(map(int, info)) for info in infos]).encode("ascii"))
    for strings in (list(map(_PATH_OF, sources)), _locations(sources)):
        for number, piece in enumerate(_pieces(strings)):
            digest.update(("\0" if number else "").encode() + "\0".join(piece).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


#: Files per piece that :func:`scan_digest` packs or joins at once.
_DIGEST_FILES = 8192


def _pieces(items: list[Any]) -> Iterator[list[Any]]:
    return (items[start:start + _DIGEST_FILES] for start in range(0, len(items), _DIGEST_FILES))


def _locations(sources: list[SourceFile]) -> list[str]:
    """The sources' locations as strings: through ``os.fspath`` only if one is not a string
    (a scan gives strings: a call per file saved)."""
    locations = list(map(_LOCATION_OF, sources))
    return locations if set(map(type, locations)) <= {str} else list(map(os.fspath, locations))


def _identity_of(info: Any) -> tuple[int, ...]:
    """A stat value's numbers in the order of :class:`FileStat`'s fields."""
    return (info.st_mode, info.st_size, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_uid)


class EncodedFiles(Mapping[str, FileEntry]):
    """The files of a record whose bytes are known, parsed (and checked) only when first read.

    ``len`` and :attr:`total_size` come from the scan, so a caller that only counts (``archive
    push``'s summary) never parses a record of 100,000 entries."""

    def __init__(self, data: bytes, count: int, total_size: int) -> None:
        self._data: bytes | None = data
        self._files: Mapping[str, FileEntry] | None = None
        self._count, self.total_size = count, total_size

    def _parsed(self) -> Mapping[str, FileEntry]:
        if self._files is None:
            assert self._data is not None
            self._files, self._data = parse_record(self._data).files, None
        return self._files

    def __getitem__(self, path: str) -> FileEntry:
        return self._parsed()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"EncodedFiles({self._count} files)"


def reused_release(arc: "ArchiveInterface", known: StatCache | None, digest: str, name: str, version: str,
                   metadata: Mapping[str, Any] | None, sources: list[SourceFile],
                   total_size: int) -> tuple[Release, bytes] | None:
    """A new release ``name`` ``version`` (and its bytes) listing the files of the release
    remembered for ``digest`` on ``arc``; None when there is none to reuse."""
    published = known.published(digest, arc.identity) if known is not None else None
    if published is None:
        return None
    files = _visible_files(arc, published)
    if files is None:
        return None
    release, data = _release_around(name, version, files, metadata, len(sources), total_size)
    logger.info("%s %s: the files are those of record %s (%s %s), unchanged", name, version,
                published.record.short, published.name, published.version)
    return release, data


def _visible_files(arc: "ArchiveInterface", published: Published) -> memoryview | None:
    """The ``files`` object of the remembered record, if its release is still visible on ``arc``
    and the record's bytes hash to its id; else None (and why, at INFO)."""
    try:
        if arc.release_id(published.name, published.version) != published.record:
            logger.info("%s %s no longer names record %s: not reusing it", published.name, published.version,
                        published.record.short)
            return None
        data = arc.read_key(layout.blob_key(published.record), MAX_RECORD_BYTES)
    except (NotFoundError, IntegrityError) as exc:
        logger.info("not reusing record %s: %s", published.record.short, exc)
        return None
    files = memoryview(data)[published.files_start:published.files_end]  # 15 MB at 100,000 files: not copied
    if (BlobId.of_bytes(data) != published.record or data[published.files_start - 8:published.files_start] != b'"files":'
            or files[:1] != b"{" or files[-1:] != b"}"):
        logger.info("record %s is not what the stat cache remembers: not reusing it", published.record.short)
        return None
    return files


def _release_around(name: str, version: str, encoded_files: bytes | memoryview, metadata: Mapping[str, Any] | None,
                    count: int, total_size: int) -> tuple[Release, bytes]:
    """A new record whose canonical ``files`` object is ``encoded_files`` (from a stored record
    of the same files): :meth:`Release.create_encoded` without encoding or checking an entry."""
    check_name(name)
    if str(parse_version(version)) != version:
        raise InvalidInputError(f"version {version!r} is not in canonical form")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata = json.loads(canonical_json(check_metadata(metadata)))  # as a reader will see it
    head = Release(name, version, created, metadata, {})
    before, after = record_around_files(head.head())
    data = b"".join((before, encoded_files, after))
    release = dataclasses.replace(head, files=EncodedFiles(data, count, total_size))
    release.__dict__["record_id"] = BlobId.of_bytes(data)  # the cached_property's own slot
    return release, data


def remember_release(known: StatCache | None, arc: "ArchiveInterface", digest: str, sources: list[SourceFile],
                     started_ns: int, release: Release, data: bytes) -> None:
    """Remember ``release`` (just made visible, from ``data``) for scans of ``digest``, if every
    file had settled before the publish began at ``started_ns`` (the stat cache's racy rule:
    a later write to any of them then changes its identity, and so the digest)."""
    if known is None or not sources or not is_settled_all(sources, started_ns):
        return
    before, after = record_around_files(release.head())
    if not (data.startswith(before) and data.endswith(after)):
        return  # not written by encode_record (a record of a newer version's fields): never reused
    known.remember_published(digest, arc.identity, Published(release.name, release.version, release.record_id,
                                                             len(before), len(data) - len(after)))


def is_settled_all(sources: list[SourceFile], started_ns: int) -> bool:
    """True when every file was last changed long enough before ``started_ns``."""
    return is_settled(max(sources, key=_mtime_of).info, started_ns)


def _mtime_of(source: SourceFile) -> int:
    return source.info.st_mtime_ns


class EarlierRelease:
    """The files of an earlier release of a name (the latest, or one ``version``), read once and
    only when first asked: a hint (sizes, media types), so one that cannot be read has none."""

    def __init__(self, arc: "ArchiveInterface", name: str, version: str | None = None) -> None:
        self._arc, self._name, self._version = arc, name, version
        self._files: Mapping[str, FileEntry] | None = None

    def sizes(self) -> frozenset[int]:
        """The sizes of its files, taken from the record's text: no entry of 100,000 is built
        (50 MB and 0.5 s) for what is only a hint. A record that does not verify gives none."""
        if self._files is not None:
            return frozenset(entry.size for entry in self._files.values())
        try:
            versions = [self._version] if self._version else self._arc.versions(self._name)
            if not versions:
                return frozenset()
            record = self._arc.release_id(self._name, versions[0])
            data = self._arc.read_key(layout.blob_key(record), MAX_RECORD_BYTES)
            if BlobId.of_bytes(data) != record:
                raise IntegrityError(f"record {record.short} does not match its id")
        except ArchiveError as exc:
            logger.info("not using the latest release of %s as a hint: %s", self._name, exc)
            return frozenset()
        return frozenset(map(int, _SIZE_IN_RECORD.findall(data)))

    def files(self) -> Mapping[str, FileEntry]:
        if self._files is None:
            self._files = {}
            try:
                versions = [self._version] if self._version else self._arc.versions(self._name)
                if versions:
                    self._files = self._arc.get_release(self._name, versions[0]).files
            except ArchiveError as exc:
                logger.info("not using the latest release of %s as a hint: %s", self._name, exc)
        return self._files
