"""Offline: resolve, pull and open from what the cache holds when the archive is out of reach.

Every release record this machine reads is verified (its bytes hash to its id), so it can be
kept: :class:`KnownReleases` writes, the first time a release is read from an archive, its
record and a pointer to it into ``<cache>/offline/<key>/``, laid out like an archive
(``archive.json``, ``releases/NAME/VERSION``, ``blobs/...`` holding only records), where
``<key>`` names the archive's location; the blobs of files stay in the cache's own store. That costs two local ``stat`` calls per release read, and two small
writes the first time.

With ``ARCHIVE_OFFLINE=1``, or when the archive cannot be reached (unreachable, or its folder
gone) and the cache knows it, :func:`get_interface <archive.locations.get_interface>` returns
an :class:`OfflineArchive`: a read-only archive whose releases are those known, and whose
blobs are the cache's. Ranges resolve over the versions seen before (yanks are not known
offline); a version never seen, or a blob never fetched (a ``pull --to`` from an archive on a
local disk copies straight from it, bypassing the cache), fails with one line saying so.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ContextManager

from . import layout
from .backends.filesystem import FileSystemArchive
from .errors import ArchiveError, KeyNotFoundError, NotFoundError
from .interface import ArchiveInterface, KeyInfo

if TYPE_CHECKING:
    from .cache import BlobCache
    from .records import Release

logger = logging.getLogger(__name__)
OFFLINE_DIR = "offline"
OFFLINE_ENV = "ARCHIVE_OFFLINE"


def offline_requested() -> bool:
    """True when ``$ARCHIVE_OFFLINE`` asks not to reach any archive (``1``, ``true``, ``yes``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def offline_root(cache: "BlobCache", location: str) -> Path:
    """The folder that holds what the cache knows of the archive at ``location``."""
    return cache.root / OFFLINE_DIR / hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]


class KnownReleases:
    """Keeps each verified release record read from an archive, for offline use."""

    def __init__(self, cache: "BlobCache") -> None:
        self.cache = cache

    def remember(self, arc: ArchiveInterface, release: "Release", data: bytes) -> None:
        """Note ``release`` (already verified), read from ``arc`` as the record bytes ``data``
        (kept as they are: they hash to its id); never fails a read."""
        root = offline_root(self.cache, arc.location)
        key = layout.release_key(release.name, release.version)
        record_id, record_key = release.record_id, layout.blob_key(release.record_id)
        try:
            if _read_text(root.joinpath(*key.split("/"))) == f"{record_id}\n" and \
                    root.joinpath(*record_key.split("/")).is_file():
                return  # known already: one small read and one stat
            notes = FileSystemArchive(root, durable=False, local=True)
            notes.write_key(record_key, [data])
            if _read_text(root / layout.MARKER_KEY) != _marker(arc).decode():
                notes.write_key(layout.MARKER_KEY, [_marker(arc)])
            notes.write_key(key, [f"{record_id}\n".encode()])
        except (OSError, ArchiveError) as exc:  # a read-only cache must not stop reading releases
            logger.debug("cannot keep record %s for offline use: %s", record_id.short, exc)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _marker(arc: ArchiveInterface) -> bytes:
    from .records import canonical_json

    marker = {"format": "archive", "version": layout.NAMESPACES_FORMAT_VERSION}
    if arc.archive_id:
        marker["id"] = arc.archive_id
    return canonical_json(marker) + b"\n"


class OfflineArchive(FileSystemArchive):
    """The releases of one archive known to the cache, readable without the archive."""

    read_only = True

    def __init__(self, location: str, cache: "BlobCache") -> None:
        super().__init__(offline_root(cache, location), durable=False, local=False)
        self.location = location
        self.cache = cache

    def _blob_store(self, key: str) -> FileSystemArchive | None:
        """None for a key of this folder (pointers, and the records kept beside them), else the
        cache's blob store (the blobs of files)."""
        if not key.startswith(layout.BLOBS_DIR + "/"):
            return None
        try:
            FileSystemArchive.stat_key(self, key)
        except KeyNotFoundError:
            return self.cache.store
        return None

    def stat_key(self, key: str) -> KeyInfo:
        store = self._blob_store(key)
        return super().stat_key(key) if store is None else store.stat_key(key)

    def open_key(self, key: str) -> ContextManager[BinaryIO]:
        store = self._blob_store(key)
        return super().open_key(key) if store is None else store.open_key(key)

    def list_keys(self, prefix: str) -> list[str]:
        return [] if prefix.startswith(layout.YANKS_DIR) else super().list_keys(prefix)

    def copy_blob_to(self, blob_id, size, target, on_bytes=None) -> None:
        try:
            super().copy_blob_to(blob_id, size, target, on_bytes)
        except KeyNotFoundError:
            raise NotFoundError(f"offline: the cache does not hold blob {blob_id.short} (never fetched from"
                                f" {self.location})") from None

    def resolve(self, name: str, range: str = "*", **options) -> "Release":
        """As :meth:`ArchiveInterface.resolve`, over the releases the cache knows."""
        try:
            return super().resolve(name, range, **options)
        except NotFoundError as exc:
            raise type(exc)(f"offline: {exc}; the cache knows only releases read before from"
                            f" {self.location}") from None


def open_offline(location: str, reason: str) -> OfflineArchive:
    """The offline view of the archive at ``location``, saying so in one line (``reason``).

    Raises
    ------
    NotFoundError
        The cache knows nothing of that archive.
    """
    from .cache import default_cache

    cache = default_cache()
    arc = OfflineArchive(location, cache)
    if not (arc.root / layout.MARKER_KEY).is_file():
        raise NotFoundError(f"offline ({reason}): the cache holds nothing of {location}")
    arc.check_archive()
    logger.warning("offline (%s): answering from what the cache holds", reason)
    return arc


def knows(location: str) -> bool:
    """True when the cache holds releases read from ``location``."""
    from .cache import default_cache

    return (offline_root(default_cache(), location) / layout.MARKER_KEY).is_file()


def reachable_or_offline(arc: ArchiveInterface, create: bool) -> ArchiveInterface:
    """``arc`` checked (or created) and keeping what it reads for offline use; or, offline
    (asked for, or the archive out of reach and known to the cache), its offline view."""
    from .cache import default_cache
    from .errors import BackendUnavailableError, NotAnArchiveError

    if offline_requested() and not create:
        arc.close()
        return open_offline(arc.location, f"{OFFLINE_ENV} is set")
    try:
        arc.initialize() if create else arc.check_archive()
    except (BackendUnavailableError, NotAnArchiveError) as exc:
        if create or not knows(arc.location):
            raise
        arc.close()
        why = f"no archive at {arc.location} now" if isinstance(exc, NotAnArchiveError) else str(exc)
        return open_offline(arc.location, why)
    arc.known = KnownReleases(default_cache())
    return arc
