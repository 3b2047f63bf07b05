"""The local blob cache: every blob ever downloaded, verified, stored by its hash.

The cache uses the archive's own blob layout in a folder of the user cache dir
(``ARCHIVE_CACHE_DIR`` overrides it), through a :class:`FileSystemArchive`, so it fills
atomically like any archive. A blob enters only after its content was checked against its id
while streaming, and is checked again whenever it is copied out: a blob corrupted on the local
disk is detected, evicted, and fetched again once. Materialized releases ("snapshots", the
read-only folders ``archive pull`` gives without ``--to``) live beside the blobs.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from . import layout
from .backends.filesystem import FileSystemArchive
from .errors import KeyNotFoundError
from .hashing import BlobId, iter_chunks, verified_chunks
from .statcache import StatCache
from .transfer import with_retries

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
SNAPSHOTS_DIR = "snapshots"


class BlobCache:
    """A content-addressed cache of blobs in ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.store = FileSystemArchive(self.root)
        #: Remembered hashes of files (published sources and cached blobs).
        self.stat_cache = StatCache(self.root / "stat.sqlite")

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    def has(self, blob: BlobId, size: int) -> bool:
        try:
            return self.store.stat_key(layout.blob_key(blob)).size == size
        except KeyNotFoundError:
            return False

    def path_of(self, blob: BlobId) -> Path:
        return self.store.local_path(layout.blob_key(blob))

    def fetch(self, arc: "ArchiveInterface", blob: BlobId, size: int,
              on_bytes: Callable[[int], None] | None = None) -> None:
        """Make sure ``blob`` is in the cache, copying it from ``arc`` (verified) if needed."""
        if self.has(blob, size):
            return
        logger.debug("fetching blob %s (%d bytes) from %s", blob.short, size, arc.location)
        with_retries(lambda: arc.copy_blob_to(blob, size, self.store, on_bytes), f"download of blob {blob.short}")

    def evict(self, blob: BlobId) -> None:
        """Remove a blob found corrupt, so that the next fetch replaces it."""
        logger.warning("evicting corrupt blob %s from the cache %s", blob.short, self.root)
        try:
            self.store.delete_key(layout.blob_key(blob))
        except KeyNotFoundError:
            pass

    def verified_chunks(self, blob: BlobId, size: int) -> Iterator[bytes]:
        """The blob's bytes, checked against its id and size as they are read."""
        with self.store.open_key(layout.blob_key(blob)) as stream:
            yield from verified_chunks(iter_chunks(stream), blob, size, f"cached blob {blob.short}")

    @contextmanager
    def open_verified(self, blob: BlobId, size: int) -> Iterator[BinaryIO]:
        """Open a cached blob for reading after checking its whole content once."""
        for _ in self.verified_chunks(blob, size):
            pass
        with self.store.open_key(layout.blob_key(blob)) as stream:
            yield stream

    def snapshot_dir(self, name: str, version: str, record_id: BlobId) -> Path:
        """Where the read-only copy of a release lives; the record id keeps two archives'
        different releases of the same name and version apart."""
        return self.root / SNAPSHOTS_DIR / name / version / record_id.hexdigest[:16]


def default_cache() -> BlobCache:
    """The user's cache: ``$ARCHIVE_CACHE_DIR`` or the platform's user cache dir."""
    root = os.environ.get("ARCHIVE_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("archive", appauthor=False)
    return BlobCache(root)
