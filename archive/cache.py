"""The local blob cache: every blob ever downloaded, verified, stored by its hash.

The cache uses the archive's own blob layout in a folder of the user cache dir
(``ARCHIVE_CACHE_DIR`` overrides it), through a :class:`FileSystemArchive`, so it fills
atomically like any archive. A blob enters only after its content was checked against its id
while streaming, and is checked again whenever it is copied out: a blob corrupted on the local
disk is detected, evicted, and fetched again once. Materialized releases ("snapshots", the
read-only folders ``archive pull`` gives without ``--to``) live beside the blobs.

Several processes may use one cache at once. Each holds a shared lock on ``in-use.lock`` while
it may write; :meth:`BlobCache.clean_stale` removes the temporaries of killed processes (the
``tmp/<uuid hex>.part`` files of the folder archive, the half-built snapshots) by the rules of
:mod:`archive.inflight`, never those of a live one.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from . import layout
from .backends.filesystem import FileSystemArchive
from .errors import IntegrityError, KeyNotFoundError
from .hashing import BlobId, iter_chunks, verified_chunks
from .inflight import ClaimedFolder, SharedUse, is_old, remove_if_stale
from .statcache import StatCache, knows_boots
from .transfer import with_retries

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
SNAPSHOTS_DIR = "snapshots"
BUILDING_DIR = ".building"  # in SNAPSHOTS_DIR: snapshots being built, renamed into place when whole
#: Blobs up to this size are hashed again whenever they are used, never looked up in the stat
#: cache nor remembered there: hashing 64 KiB costs about what one lookup does.
REHASH_BELOW = 64 * 1024
#: Verified blobs noted in memory before they are written to the stat cache in one transaction:
#: a lock round and a commit per blob made 16 download threads queue on the stat cache.
REMEMBER_BATCH = 256
#: The temporary files of :class:`FileSystemArchive` writes (``tmp/<uuid hex>.part``).
_STORE_TEMPORARY = re.compile(r"[0-9a-f]{32}\.part")


class BlobCache:
    """A content-addressed cache of blobs in ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        # Not durable: the cache is disposable, and what it holds is trusted only after it was
        # verified since the last boot (see _remember_verified), so a crash can cost no more
        # than a re-hash. Skipping fsync halves the disk flushes of a download.
        self.store = FileSystemArchive(self.root, durable=not knows_boots())
        #: Remembered hashes of files (published sources and cached blobs).
        self.stat_cache = StatCache(self.root / "stat.sqlite")
        self._use = SharedUse(self.root / "in-use.lock")
        #: Blobs this process verified (hex digest -> identity of the cache file then), so that
        #: using one just fetched asks no database; and those not yet saved to the stat cache.
        self._verified: dict[str, tuple[int, int, int, int]] = {}
        self._unsaved: list[tuple[Path, os.stat_result, BlobId]] = []
        self._verified_lock = threading.Lock()
        # what no caller saved is saved when the cache goes away, or at the latest at exit
        weakref.finalize(self, _save, self.stat_cache, self._unsaved)

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
        self._use.share()
        with_retries(lambda: arc.copy_blob_to(blob, size, self.store, on_bytes), f"download of blob {blob.short}")
        if size > REHASH_BELOW:  # a small one is hashed again when used (see REHASH_BELOW)
            self._remember_verified(blob)

    def put_verified(self, blob: BlobId, data: bytes) -> None:
        """Keep ``data``, a small blob (up to :data:`REHASH_BELOW`) the caller checked against
        ``blob`` already, as :meth:`fetch` would have kept it (read in a group by a download)."""
        self._use.share()
        self.store.write_key(layout.blob_key(blob), [data])

    def verified_path(self, arc: "ArchiveInterface", blob: BlobId, size: int) -> Path:
        """The cache file of ``blob``, known to be intact: fetched if missing; re-hashed unless
        verified before and unchanged since; evicted and fetched again once if corrupt."""
        self.fetch(arc, blob, size)
        path = self.path_of(blob)
        try:
            info = os.stat(path)
            if self._verified.get(blob.hexdigest) == _identity(info):
                return path
            if self.stat_cache.lookup(path, info, with_ctime=False) == blob:
                return path
            self._check(blob, size)
        except (IntegrityError, KeyNotFoundError, FileNotFoundError):
            self.evict(blob)
            self.fetch(arc, blob, size)
            self._check(blob, size)
        self._remember_verified(blob)
        return path

    def _check(self, blob: BlobId, size: int) -> None:
        with self.store.open_key(layout.blob_key(blob)) as stream:
            for _ in verified_chunks(iter_chunks(stream), blob, size, f"cached blob {blob.short}"):
                pass

    def _remember_verified(self, blob: BlobId) -> None:
        """Note that the cache file of ``blob`` was verified as it is now, until the next boot.

        Cache files are written only by us, whole, and read-only, so no racily-clean margin is
        needed; ctime is left out (hard links to the file change it) and the boot is put in its
        place: data not yet flushed when the machine went down is checked again after it.

        Noted in memory at once, saved to the stat cache by :data:`REMEMBER_BATCH` blobs and by
        :meth:`save_verified`: a process killed before that only costs a re-hash next time.
        """
        path = self.path_of(blob)
        info = os.stat(path)
        with self._verified_lock:
            self._verified[blob.hexdigest] = _identity(info)
            self._unsaved.append((path, info, blob))
            full = len(self._unsaved) >= REMEMBER_BATCH
        if full:
            self.save_verified()

    def save_verified(self) -> None:
        """Write the blobs verified since the last call to the stat cache, in one transaction."""
        with self._verified_lock:
            unsaved = self._unsaved[:]
            self._unsaved.clear()  # the same list: the finalizer holds it
        _save(self.stat_cache, unsaved)

    def evict(self, blob: BlobId) -> None:
        """Remove a blob found corrupt, so that the next fetch replaces it."""
        logger.warning("evicting corrupt blob %s from the cache %s", blob.short, self.root)
        with self._verified_lock:
            self._verified.pop(blob.hexdigest, None)
            self._unsaved[:] = [entry for entry in self._unsaved if entry[2] != blob]
        self.stat_cache.forget(self.path_of(blob))
        try:
            self.store.delete_key(layout.blob_key(blob))
        except KeyNotFoundError:
            pass

    def clean_stale(self) -> list[Path]:
        """Remove what killed processes left in the cache; return what was removed.

        Alone (no other process holds the cache's use lock) every store temporary is stale;
        otherwise only those unchanged for :data:`archive.inflight.STALE_AGE_S`. A half-built
        snapshot is stale once its builder's lock is gone. Then this process holds the use lock
        shared, so that no later cleaner removes its own temporaries.
        """
        removed: list[Path] = []
        alone = self._use.try_alone()
        try:
            for entry in _scan(self.store.local_path(layout.TMP_DIR)):
                if _STORE_TEMPORARY.fullmatch(entry.name) and (alone or is_old(entry.stat(follow_symlinks=False))):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    logger.info("removed %s, left by an interrupted download", entry.path)
                    removed.append(Path(entry.path))
            for entry in _scan(self.root / SNAPSHOTS_DIR / BUILDING_DIR):
                if remove_if_stale(Path(entry.path)):
                    removed.append(Path(entry.path))
        finally:
            self._use.share()
        return removed

    @contextmanager
    def building_folder(self) -> Iterator[Path]:
        """A new, empty folder to build a snapshot in, locked as alive while in use, removed after."""
        self._use.share()
        parent = self.root / SNAPSHOTS_DIR / BUILDING_DIR
        parent.mkdir(parents=True, exist_ok=True)
        with ClaimedFolder(lambda: parent / uuid.uuid4().hex) as path:
            yield path

    def snapshot_dir(self, name: str, version: str, record_id: BlobId) -> Path:
        """Where the read-only copy of a release lives; the record id keeps two archives'
        different releases of the same name and version apart."""
        return self.root / SNAPSHOTS_DIR / layout.name_folder(name) / version / record_id.hexdigest[:16]


def _save(stat_cache: StatCache, verified: list[tuple[Path, os.stat_result, BlobId]]) -> None:
    if verified:
        stat_cache.remember(verified, hashed_at_ns=None, with_ctime=False)


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What must not change for a blob verified by this process to be trusted again."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def default_cache() -> BlobCache:
    """The user's cache: ``$ARCHIVE_CACHE_DIR`` or the platform's user cache dir."""
    root = os.environ.get("ARCHIVE_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("archive", appauthor=False)
    return BlobCache(root)
